// vidpipe page behaviour: upload progress, seeking from transcript/storyboard, current line.
(function () {
  "use strict";

  // Upload progress for the HTMX-enhanced upload form.
  document.addEventListener("htmx:xhr:progress", function (evt) {
    var bar = document.getElementById("upload-progress");
    if (!bar || !evt.target.closest("#upload-form") || !evt.detail.lengthComputable) return;
    bar.hidden = false;
    bar.value = (evt.detail.loaded / evt.detail.total) * 100;
  });
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var form = evt.target.closest && evt.target.closest("#upload-form");
    if (form) document.getElementById("upload-submit").disabled = true;
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.target.closest && evt.target.closest("#upload-form");
    // 4xx answers are swapped in (they carry the message), so look at the status itself.
    if (!form || (evt.detail.successful && evt.detail.xhr.status < 400)) return;
    document.getElementById("upload-submit").disabled = false;
    document.getElementById("upload-progress").hidden = true;
  });

  // Clicking a transcript line or a storyboard tile seeks the player there.
  document.addEventListener("click", function (evt) {
    var target = evt.target.closest("#transcript [data-start], #storyboard [data-start]");
    var player = document.getElementById("player");
    if (!target || !player) return;
    player.currentTime = parseFloat(target.dataset.start);
    highlight(player);
  });

  // A page opened at a moment (/videos/<id>?t=12.3, e.g. from search) plays from there. If
  // the browser refuses to start playing by itself, the player waits at that moment.
  function startAt() {
    var player = document.getElementById("player");
    var t = player ? parseFloat(player.dataset.startAt) : NaN;
    if (!(t >= 0)) return;
    delete player.dataset.startAt;
    function go() {
      player.currentTime = t;
      highlight(player);
      var playing = player.play();
      if (playing && playing.catch) playing.catch(function () {});
    }
    if (player.readyState >= 1) go();
    else player.addEventListener("loadedmetadata", go, { once: true });
    player.scrollIntoView({ block: "center" });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startAt);
  else startAt();

  // Media events do not bubble: listen in the capture phase so swapped-in players work too.
  document.addEventListener("timeupdate", function (evt) {
    if (evt.target.id === "player") highlight(evt.target);
  }, true);

  function highlight(player) {
    var t = player.currentTime;
    var lines = document.querySelectorAll("#transcript .line");
    lines.forEach(function (line) {
      var current = t >= parseFloat(line.dataset.start) && t < parseFloat(line.dataset.end);
      if (current !== line.classList.contains("current")) {
        line.classList.toggle("current", current);
        if (current) line.setAttribute("aria-current", "true");
        else line.removeAttribute("aria-current");
      }
    });
  }
})();
