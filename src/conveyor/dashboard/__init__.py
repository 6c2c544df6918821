"""See a run: the live dashboard (``conveyor dashboard``) and the shareable report
(``conveyor report``). An edge above the store, beside the CLI: it reads only through the
``Store`` interface, on a read-only handle, and is imported only by those two commands
(Starlette, uvicorn and matplotlib: ``conveyor[dashboard]``)."""
