// conveyor dashboard: replaces the live panels with each frame the server pushes (SSE).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("conn");
  if (!live || !window.EventSource) { return; }
  var source = new EventSource("events");
  source.onmessage = function (msg) {
    var frame = JSON.parse(msg.data);
    live.innerHTML = frame.html;
    live.setAttribute("data-version", String(frame.version));
    if (state) { state.textContent = "live"; state.className = "alive"; }
  };
  source.onerror = function () {
    if (state) { state.textContent = "reconnecting"; state.className = "lost"; }
  };
}());
