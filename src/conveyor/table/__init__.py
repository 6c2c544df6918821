"""The table builder: declare columns, build a dataset row group by row group on the engine."""
