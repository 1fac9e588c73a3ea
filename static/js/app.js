// vidpipe page behaviour: uploads from the drop zone, the library's selection, seeking from
// transcript/storyboard, the transcript's copy button, progress said to screen readers.
// Every page works without it: the forms post as they are.
(function () {
  "use strict";
  // The lists whose items are one tab stop together (see "one tab stop each" below).
  var ROVING = "#storyboard, #transcript, #translation";
  document.documentElement.classList.add("js");

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // -- uploads: several files, one request and one bar each --------------------------------
  var form = null, input = null, list = null, button = null, zone = null;
  var uploading = false;

  function setUpUpload() {
    form = document.getElementById("upload-form");
    if (!form) return;
    input = document.getElementById("upload-file");
    list = document.getElementById("upload-list");
    button = document.getElementById("upload-submit");
    zone = document.getElementById("drop-zone");
    input.addEventListener("change", showChosen);
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (evt) {
        evt.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
    });
    // Files dropped beside the zone are not the browser's to open: it would leave the page
    // (and any upload under way) for the file itself.
    ["dragover", "drop"].forEach(function (type) {
      document.addEventListener(type, function (evt) {
        var types = evt.dataTransfer ? Array.prototype.slice.call(evt.dataTransfer.types) : [];
        if (types.indexOf("Files") >= 0) evt.preventDefault();
      });
    });
    // Leaving the page stops the uploads under way: the browser asks first.
    window.addEventListener("beforeunload", function (evt) {
      if (!uploading) return;
      evt.preventDefault();
      evt.returnValue = "";
    });
    zone.addEventListener("drop", function (evt) {
      evt.preventDefault();
      if (!evt.dataTransfer || !evt.dataTransfer.files.length) return;
      input.files = evt.dataTransfer.files;
      showChosen();
    });
    // Back to this page after an upload, the browser may hand the control its files again
    // (form restoration): say so, or the next press would upload them again unannounced.
    showChosen();
    window.addEventListener("pageshow", showChosen);
    form.addEventListener("submit", function (evt) {
      evt.preventDefault();
      if (!input.files.length) {
        say("choose a file to upload first", true);
        return;
      }
      uploadAll(Array.prototype.slice.call(input.files));
    });
  }

  function showChosen() {
    var names = Array.prototype.map.call(input.files, function (f) { return f.name; });
    document.getElementById("chosen").textContent = names.length
      ? names.length + (names.length === 1 ? " file: " : " files: ") + names.join(", ") : "";
  }

  function say(message, isError) {
    var p = document.getElementById("upload-message");
    if (!p) return;
    p.textContent = message;
    p.classList.toggle("error", !!isError);
  }

  function uploadAll(files) {
    uploading = true;
    button.disabled = true;
    say("", false);
    list.textContent = "";
    var items = files.map(function (file) { return addItem(file); });
    var options = new FormData(form);
    options.delete("file");
    var done = [];
    var next = function (i) {
      if (i >= files.length) return finish(done);
      uploadOne(files[i], items[i], options, function (result) {
        done.push(result);
        next(i + 1);
      });
    };
    next(0);
  }

  function addItem(file) {
    var li = document.createElement("li");
    var name = document.createElement("span");
    name.className = "file";
    name.textContent = file.name;
    var bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = "waiting";
    var outcome = document.createElement("span");
    outcome.className = "outcome";
    outcome.setAttribute("role", "status");
    li.append(name, bar, pct, outcome);
    list.appendChild(li);
    return {li: li, bar: bar, pct: pct, outcome: outcome};
  }

  function uploadOne(file, item, options, callback) {
    var data = new FormData();
    options.forEach(function (value, key) { data.append(key, value); });
    data.append("file", file, file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    // The same answers as for HTMX: 204 with HX-Redirect to the video, or 4xx with the
    // upload message as a fragment.
    xhr.setRequestHeader("HX-Request", "true");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.upload.addEventListener("progress", function (evt) {
      if (!evt.lengthComputable) return;
      item.bar.value = (evt.loaded / evt.total) * 100;
      item.pct.textContent = Math.floor(item.bar.value) + "\u00a0%";
    });
    xhr.addEventListener("load", function () {
      var url = xhr.getResponseHeader("HX-Redirect");
      if (xhr.status < 400 && url) {
        item.bar.value = 100;
        item.pct.textContent = "100\u00a0%";
        item.li.dataset.state = "done";
        item.outcome.textContent = "";
        var link = document.createElement("a");
        link.href = url;
        link.textContent = "uploaded: processing started, open its page";
        item.outcome.appendChild(link);
        callback({ok: true, url: url});
      } else {
        failed(item, messageOf(xhr) || ("the upload failed (" + xhr.status + ")"));
        callback({ok: false});
      }
    });
    xhr.addEventListener("error", function () {
      failed(item, "the upload failed: the server did not answer");
      callback({ok: false});
    });
    item.pct.textContent = "0\u00a0%";
    xhr.send(data);
  }

  function messageOf(xhr) {
    var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    var p = doc.getElementById("upload-message");
    return p ? p.textContent.trim() : "";
  }

  function failed(item, message) {
    item.li.dataset.state = "failed";
    item.pct.textContent = "refused";
    item.outcome.textContent = message;
    item.outcome.classList.add("error");
  }

  function finish(results) {
    uploading = false;
    button.disabled = false;
    var ok = results.filter(function (r) { return r.ok; });
    if (results.length === 1 && ok.length === 1) {
      window.location.assign(ok[0].url);  // one file: straight to its page, as before
      return;
    }
    if (results.length === 1 && !ok.length) {
      say("The file was refused: see why beside its name, then choose another.", true);
    } else if (ok.length < results.length) {
      say((results.length - ok.length) + " of " + results.length +
          " files were refused: see why beside each.", true);
    }
    form.reset();
    showChosen();
    if (ok.length && window.htmx) {  // the new videos into the list below
      window.htmx.ajax("GET", window.location.pathname + window.location.search,
                       {target: "#library", select: "#library", swap: "outerHTML"});
    }
  }

  // -- the library's selection: count, select all, confirm --------------------------------
  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll("#video-list input.select"));
  }

  function updateSelection() {
    var all = boxes(), ticked = all.filter(function (b) { return b.checked; });
    var count = document.getElementById("selected-count");
    if (count) count.textContent = ticked.length ? ticked.length + " selected" : "";
    ["bulk-delete", "bulk-reprocess"].forEach(function (id) {
      var b = document.getElementById(id);
      if (b) b.disabled = ticked.length === 0;
    });
    var selectAll = document.getElementById("select-all");
    if (selectAll) {
      selectAll.checked = all.length > 0 && ticked.length === all.length;
      selectAll.indeterminate = ticked.length > 0 && ticked.length < all.length;
    }
  }

  document.addEventListener("change", function (evt) {
    if (evt.target.id === "select-all") {
      boxes().forEach(function (b) { b.checked = evt.target.checked; });
    }
    if (evt.target.id === "select-all" || evt.target.matches("#video-list input.select")) {
      updateSelection();
    }
  });

  document.addEventListener("submit", function (evt) {
    var bulk = evt.target;
    if (bulk.id !== "bulk-form") return;
    evt.preventDefault();
    // Confirmed and on its way (a slow answer): a second press would send the selection
    // again, unasked, with the first action's "confirmed".
    if (bulk.dataset.confirmed) return;
    var action = evt.submitter ? evt.submitter.value : "";
    var n = boxes().filter(function (b) { return b.checked; }).length;
    if (!n || !action) return;
    var what = n + (n === 1 ? " selected video" : " selected videos");
    var question = action === "delete"
      ? "Delete " + what + " and all their files?" : "Reprocess " + what + " from scratch?";
    if (!window.confirm(question)) return;
    [["action", action], ["confirmed", "1"]].forEach(function (pair) {
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = pair[0];
      hidden.value = pair[1];
      bulk.appendChild(hidden);
    });
    bulk.dataset.confirmed = "1";
    bulk.setAttribute("aria-busy", "true");
    bulk.submit();
    ["bulk-delete", "bulk-reprocess"].forEach(function (id) {
      var b = document.getElementById(id);
      if (b) b.disabled = true;
    });
  });

  // Back to the library from the answer, a browser may show the page as it was left, the
  // selection's form sent: it can be used again.
  window.addEventListener("pageshow", function (evt) {
    var bulk = document.getElementById("bulk-form");
    if (!evt.persisted || !bulk || !bulk.dataset.confirmed) return;
    delete bulk.dataset.confirmed;
    bulk.removeAttribute("aria-busy");
    Array.prototype.slice.call(bulk.querySelectorAll("input[type=hidden][name=action], " +
      "input[type=hidden][name=confirmed]")).forEach(function (i) { i.remove(); });
    updateSelection();
  });

  // -- seeking from a transcript line or a storyboard tile ---------------------------------
  document.addEventListener("click", function (evt) {
    var target = evt.target.closest(
      "#transcript [data-start], #translation [data-start], #storyboard [data-start]");
    var player = document.getElementById("player");
    if (!target || !player) return;
    player.currentTime = parseFloat(target.dataset.start);
    highlight(player);
    showPlayer(player);
  });

  // A line far down the transcript (or any line on a phone) is clicked with the player out
  // of sight: it seeks unseen. The page scrolls just enough to show it (the transcript's own
  // box keeps its place), at once for someone who asked for reduced motion.
  function showPlayer(player) {
    var still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    player.scrollIntoView({block: "nearest", behavior: still ? "auto" : "smooth"});
  }

  // -- the captions shown first: the viewer's language, when a track is in it --------------
  // The server marks the spoken language's track `default`. With English captions too, a
  // viewer whose browser asks for English (or the spoken language, or neither) is shown the
  // track of the first of navigator.languages that one is in (by primary subtag: en-GB
  // takes "en"); with none, the spoken language's stays. Once per player: a choice made in
  // the player's own menu is left alone.
  function chooseCaptions() {
    var player = document.getElementById("player");
    if (!player || player.dataset.captionsChosen) return;
    player.dataset.captionsChosen = "1";
    var tracks = Array.prototype.slice.call(player.querySelectorAll("track"));
    if (tracks.length < 2) return;
    var wanted = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language || ""];
    var primary = function (tag) { return String(tag || "").split("-")[0].toLowerCase(); };
    var chosen = null;
    for (var i = 0; i < wanted.length && !chosen; i++) {
      chosen = tracks.filter(function (t) {
        return primary(t.srclang) === primary(wanted[i]);
      })[0] || null;
    }
    if (!chosen || chosen.hasAttribute("default")) return;
    tracks.forEach(function (t) {
      t.toggleAttribute("default", t === chosen);
      t.track.mode = t === chosen ? "showing" : "disabled";
    });
  }

  // -- the viewer's place, kept when a run's end brings the results anew ------------------
  // A run started from a completed video's page leaves its results shown; the panel's last
  // poll brings them anew (out of band), a new player among them: it started again from 0,
  // paused, the transcript's box at its top, and captions picked in the player's menu were
  // the page's choice again. The old player's time, whether it played, its sound and its
  // captions (a pick of the viewer's only: the page's own choice is made anew, the run may
  // have brought other tracks) go to the new one once it can seek, the boxes' scroll at once.
  var place = null;

  function trackKey(track) {
    return track ? (track.srclang || track.language || "") + "|" + (track.label || "") : "";
  }

  function showingKey(player) {
    var showing = Array.prototype.filter.call(player.textTracks, function (t) {
      return t.mode === "showing";
    })[0];
    return trackKey(showing);
  }

  function defaultKey(player) {
    return trackKey(player.querySelector("track[default]"));
  }

  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    var old = document.getElementById("player");
    var fresh = evt.detail.fragment && evt.detail.fragment.querySelector("#player");
    if (evt.target.id !== "results" || !old || !fresh || !evt.detail.shouldSwap) return;
    var scroll = {};
    document.querySelectorAll("#results .transcript[id]").forEach(function (box) {
      scroll[box.id] = box.scrollTop;
    });
    place = {time: old.currentTime, playing: !old.paused && !old.ended, muted: old.muted,
             volume: old.volume, rate: old.playbackRate, scroll: scroll};
    // Captions picked by hand (off too) that the new player has: they are its default, and
    // the page does not choose anew.
    var picked = showingKey(old);
    var tracks = Array.prototype.slice.call(fresh.querySelectorAll("track"));
    var has = tracks.some(function (t) { return trackKey(t) === picked; });
    // (A player that never loaded shows none yet: nothing was picked.)
    if (old.readyState >= 1 && picked !== defaultKey(old) && (has || !picked)) {
      tracks.forEach(function (t) { t.toggleAttribute("default", trackKey(t) === picked); });
      fresh.dataset.captionsChosen = "1";
      place.captions = picked;
    }
  });

  function restorePlace() {
    var kept = place, player = document.getElementById("player");
    place = null;
    if (!kept || !player) return;
    Object.keys(kept.scroll).forEach(function (id) {
      var box = document.getElementById(id);
      if (box) box.scrollTop = kept.scroll[id];
    });
    player.muted = kept.muted;
    player.volume = kept.volume;
    if ("captions" in kept) {
      Array.prototype.forEach.call(player.querySelectorAll("track"), function (t) {
        t.track.mode = trackKey(t) === kept.captions ? "showing" : "disabled";
      });
    }
    function go() {
      player.currentTime = Math.min(kept.time, player.duration || kept.time);
      player.playbackRate = kept.rate;
      highlight(player);
      // The line being spoken is marked without moving the box the viewer left as it was.
      Object.keys(kept.scroll).forEach(function (id) {
        var box = document.getElementById(id);
        if (box) box.scrollTop = kept.scroll[id];
      });
      if (!kept.playing) return;
      var playing = player.play();  // the browser may refuse to play with sound: it waits
      if (playing && playing.catch) playing.catch(function () {});
    }
    if (kept.time > 0 || kept.playing) {
      if (player.readyState >= 1) go();
      else player.addEventListener("loadedmetadata", go, {once: true});
    }
  }
  document.addEventListener("htmx:afterSwap", restorePlace);

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

  // A page opened from a search's "and 7 more matching lines" (/videos/<id>?q=...) is read
  // for its marked lines: the page is taken to them, and the transcript's own box to the
  // first (it was the top of the page and of the box: the marks were out of sight).
  function showMatches() {
    var note = document.getElementById("transcript-matches");
    var first = document.querySelector("#transcript .line.match, #translation .line.match");
    if (!note || !first) return;
    keepInView(first);
    note.scrollIntoView({ block: "start" });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", showMatches);
  else showMatches();

  // Media events do not bubble: listen in the capture phase so swapped-in players work too.
  document.addEventListener("timeupdate", function (evt) {
    if (evt.target.id === "player") highlight(evt.target);
  }, true);

  function highlight(player) {
    var t = player.currentTime;
    // The storyboard's frame of this moment too, brought into the strip's view (the page is
    // left where it is), and the strip's tab stop unless the keyboard is in it.
    document.querySelectorAll("#storyboard .tile").forEach(function (tile) {
      var current = t >= parseFloat(tile.dataset.start) && t < parseFloat(tile.dataset.end);
      if (current === tile.classList.contains("current")) return;
      tile.classList.toggle("current", current);
      if (current) {
        tile.setAttribute("aria-current", "true");
        var strip = tile.parentNode, inner = strip.getBoundingClientRect();
        var at = tile.getBoundingClientRect();
        if (at.left < inner.left || at.right > inner.right) {
          strip.scrollLeft += at.left - inner.left - (inner.width - at.width) / 2;
        }
        if (!strip.contains(document.activeElement)) tabStop(tile);
      } else {
        tile.removeAttribute("aria-current");
      }
    });
    var lines = document.querySelectorAll("#transcript .line, #translation .line");
    lines.forEach(function (line) {
      var current = t >= parseFloat(line.dataset.start) && t < parseFloat(line.dataset.end);
      if (current !== line.classList.contains("current")) {
        line.classList.toggle("current", current);
        if (current) {
          line.setAttribute("aria-current", "true");
          keepInView(line);
          // Tab into the transcript lands on the line being spoken, unless the keyboard
          // is in it already (its focus is not moved from under it).
          if (!line.closest(ROVING).contains(document.activeElement)) tabStop(line);
        } else {
          line.removeAttribute("aria-current");
        }
      }
    });
  }

  // The transcript (and its translation) scrolls on its own (max-height): the line being
  // spoken is brought into its view when it becomes current, the page is left where it is.
  function keepInView(line) {
    var box = line.closest(".transcript");
    if (!box) return;
    var inner = box.getBoundingClientRect(), at = line.getBoundingClientRect();
    if (at.top >= inner.top && at.bottom <= inner.bottom) return;
    box.scrollTop += at.top - inner.top - (inner.height - at.height) / 2;
  }

  // -- one tab stop each for the storyboard, the transcript and its translation -----------
  // A long video has a hundred frames and hundreds of lines, each a button: the downloads
  // were hundreds of Tabs away. Each list is one stop (its item last moved to, or the line
  // being spoken), and the arrow keys, Home and End move within it. Without JavaScript every
  // item stays a stop of its own.
  function rovingItems(list) {
    return Array.prototype.slice.call(list.querySelectorAll("[data-start]"));
  }

  function tabStop(item) {
    rovingItems(item.closest(ROVING)).forEach(function (other) {
      other.tabIndex = other === item ? 0 : -1;
    });
  }

  function setUpRoving() {
    document.querySelectorAll(ROVING).forEach(function (list) {
      var all = rovingItems(list);
      if (!all.length || all.some(function (item) { return item.getAttribute("tabindex") === "0"; })) {
        return;
      }
      tabStop(all[0]);
      if (list.id === "storyboard") {
        list.setAttribute("role", "toolbar");
        list.setAttribute("aria-label", "Storyboard: a frame every few seconds");
      }
    });
  }

  document.addEventListener("keydown", function (evt) {
    var item = evt.target.closest && evt.target.closest("[data-start]");
    var list = item && item.closest(ROVING);
    if (!list || evt.altKey || evt.ctrlKey || evt.metaKey || evt.shiftKey) return;
    var all = rovingItems(list), at = all.indexOf(item), to;
    if (evt.key === "ArrowRight" || evt.key === "ArrowDown") to = Math.min(at + 1, all.length - 1);
    else if (evt.key === "ArrowLeft" || evt.key === "ArrowUp") to = Math.max(at - 1, 0);
    else if (evt.key === "Home") to = 0;
    else if (evt.key === "End") to = all.length - 1;
    else return;
    evt.preventDefault();
    tabStop(all[to]);
    all[to].focus();
  });

  // A click (or a search's marked line) makes its item the list's stop too.
  document.addEventListener("focusin", function (evt) {
    var item = evt.target.closest && evt.target.closest("[data-start]");
    if (item && item.closest(ROVING)) tabStop(item);
  });

  // -- the transcript's copy button (shown where the clipboard can be written) -------------
  function setUpCopy() {
    var copy = document.getElementById("transcript-copy");
    if (copy && navigator.clipboard && window.isSecureContext) copy.hidden = false;
  }

  document.addEventListener("click", function (evt) {
    var copy = evt.target.closest("#transcript-copy");
    if (!copy) return;
    var status = document.getElementById("copy-status");
    fetch(copy.dataset.source, {credentials: "same-origin"})
      .then(function (resp) {
        if (!resp.ok) throw new Error(resp.status);
        return resp.text();
      })
      .then(function (text) { return navigator.clipboard.writeText(text); })
      .then(function () { status.textContent = "Copied to the clipboard."; })
      .catch(function () { status.textContent = "Could not copy: use Download as text."; });
  });

  // -- progress, said to screen readers (the polled panel is replaced every second) --------
  // Its status, each quarter of the way, and its banners as they come and go: the job queue
  // not answering (and answering again), no worker running.
  var said = {status: null, quarter: null, queue: null, worker: null};

  function bannerText(id) {
    var banner = document.querySelector("#progress-panel #" + id);
    return banner ? banner.textContent.replace(/\s+/g, " ").trim() : "";
  }

  function bannerNews(queue, worker) {
    var news = [];
    if (queue !== said.queue) {
      news.push(queue || "The job queue (Redis) answers again.");
    }
    if (worker && worker !== said.worker) news.push(worker);
    return news;
  }

  function announce() {
    var panel = document.getElementById("progress-panel");
    var out = document.getElementById("progress-announcer");
    if (!panel || !out) return;
    var status = panel.dataset.status;
    var bar = document.getElementById("overall-progress");
    if (!bar) return;  // the video was deleted meanwhile: its panel says so (role=alert)
    var value = parseFloat(bar.getAttribute("value"));
    var quarter = Math.floor(value / 25);
    var now = {status: status, quarter: quarter, queue: bannerText("queue-banner"),
               worker: bannerText("worker-banner")};
    if (said.status === null) {  // the page as opened: nothing new to say
      said = now;
      return;
    }
    var news = [];
    if (status !== said.status || quarter !== said.quarter) {
      // A run that failed or was cancelled also says why: the summary above the steps.
      var why = status !== said.status ? document.getElementById("task-error") : null;
      news.push("Processing " + status + ", " + Math.floor(value) + " percent." +
        (why ? " " + why.textContent.trim() : ""));
    }
    news = news.concat(bannerNews(now.queue, now.worker));
    if (news.length) out.textContent = news.join(" ");
    said = now;
  }

  document.addEventListener("htmx:afterSettle", announce);

  // HTMX gives the focus back to the element with the same id after a swap, but not when
  // the swap disabled it (Cancel, when the run ends): the focus fell to the page's top and
  // a keyboard user started over from the header. It goes to the panel's heading instead,
  // so that Tab goes on to Run and Reprocess.
  // A control kept across the swap (hx-preserve: a row's checkbox, the run's language menu,
  // an opened error detail) keeps the focus too. Browsers without Element.moveBefore
  // (Safari) have HTMX take it out of the page and put it back, which drops the focus, and
  // HTMX gives it back only to an element that left the page for good: a keyboard user's
  // place was lost at every poll, once a second.
  var focusWasInPanel = false;
  var focusedBeforeSwap = null;
  document.addEventListener("htmx:beforeSwap", function () {
    var active = document.activeElement;
    focusedBeforeSwap = active && active !== document.body ? active : null;
    focusWasInPanel = !!(active && active.closest && active.closest("#progress-panel"));
  });
  document.addEventListener("htmx:afterSettle", function () {
    var active = document.activeElement;
    var kept = focusedBeforeSwap;
    focusedBeforeSwap = null;
    if (active && active !== document.body) return;
    if (kept && kept.isConnected && !kept.disabled) {
      kept.focus({preventScroll: true});
      if (document.activeElement === kept) return;
    }
    if (!focusWasInPanel) return;
    focusWasInPanel = false;
    var title = document.getElementById("progress-title");
    if (!title) return;
    title.setAttribute("tabindex", "-1");
    title.focus();
  });

  // -- the ETA, counted down between polls ------------------------------------------------
  // The server's ETA is as of the task's last change (so that an unchanged panel keeps its
  // tag and a poll costs a 304): the page counts down to its data-eta-at instead, on the
  // browser's clock corrected by the server's (#server-time, when the page was made, set
  // against the browser's when the page starts). Past it, while the run goes on, it says so.
  var LATE = 5;  // seconds past the estimate still said to be "finishing"
  var skew = 0;  // server clock minus browser clock, in ms

  function setUpClock() {
    var stamp = document.getElementById("server-time");
    var server = stamp ? Date.parse(stamp.getAttribute("datetime")) : NaN;
    if (isNaN(server)) return;
    // The page arrived a moment after it was made: the countdown errs on the long side.
    skew = server - Date.now();
  }

  // As ui.duration(approximate=True) words it.
  function approximately(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 120) return Math.round(seconds) + " s";
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + " min";
    minutes = 5 * Math.round(seconds / 300);
    var hours = Math.floor(minutes / 60);
    minutes %= 60;
    return minutes ? hours + " h " + minutes + " min" : hours + " h";
  }

  function countDown() {
    var eta = document.getElementById("eta");
    var at = eta ? Date.parse(eta.dataset.etaAt || "") : NaN;
    if (isNaN(at)) return;
    var left = (at - (Date.now() + skew)) / 1000;
    var text = left >= 0.5 ? "about " + approximately(left) + " left"
      : left > -LATE ? "finishing" : "taking longer than estimated";
    if (eta.textContent !== text) eta.textContent = text;
  }

  // Right after a swap too (before it is painted), not to show the rendered text again.
  document.addEventListener("htmx:afterSwap", countDown);
  setInterval(countDown, 250);

  // -- requests the server did not answer, or answered with a page not its own ------------
  // HTMX says nothing when a request fails on the way (the connection down, a timeout), and
  // swaps in any 4xx/5xx answer (the app's are fragments: a 409's panel and message): a
  // proxy's error page took the panel's place. A failed action says so in the message line;
  // a failed poll (a GET) says that the page may be out of date until a request succeeds
  // again (every page asks at least every 10 s whether the job queue answers).
  var lastHeard = new Date();
  // The polls (GETs) whose last request failed: the banner stays until each has succeeded
  // again or left the page. Another poll's success is no sign for them: the queue's watch,
  // answered from Redis, went on answering 204 through a database outage and took the
  // banner away every 10 s while the page's own polls still failed.
  var failing = [];

  function isPage(xhr) {
    return /^\s*(<!doctype|<html)/i.test(xhr.responseText || "");
  }

  function trouble(evt, what) {
    var config = evt.detail.requestConfig || {};
    var line = document.getElementById("message");
    if ((config.verb || "get") !== "get" && line) {
      line.className = "message error";
      line.textContent = what + ": reload the page to see whether it was done, then try again.";
      return;
    }
    if (failing.indexOf(evt.detail.elt) < 0) failing.push(evt.detail.elt);
    var out = document.getElementById("connection-status");
    if (!out || out.firstChild) return;  // said once, until the failed requests succeed
    var p = document.createElement("p");
    p.className = "banner";
    p.id = "connection-lost";
    p.textContent = what + ", so this page may be out of date: it last heard from it at " +
      lastHeard.toLocaleTimeString() + ". It keeps asking.";
    out.appendChild(p);
  }

  function noAnswer(evt) { trouble(evt, "The server did not answer"); }
  document.addEventListener("htmx:sendError", noAnswer);
  document.addEventListener("htmx:timeout", noAnswer);

  document.addEventListener("htmx:beforeSwap", function (evt) {
    var xhr = evt.detail.xhr;
    if (xhr.status < 400 || !isPage(xhr)) return;
    evt.detail.shouldSwap = false;
    trouble(evt, "The server answered with an error (" + xhr.status +
      (xhr.statusText ? " " + xhr.statusText : "") + ")");
  });

  // The app's own 5xx to a poll keeps what the page shows (HX-Reswap: none), but the page
  // is no longer up to date: said like a request that got no answer. (HTMX's
  // htmx:responseError does not fire here: the page's responseHandling, base.html, swaps
  // 4xx/5xx fragments in, and only a rule marked "error" fires it.) An action's 5xx brings
  // its own sentence, which goes to the message line.
  function appError(evt) {
    var xhr = evt.detail.xhr;
    return !isAction(evt) && xhr && xhr.status >= 500 && !isPage(xhr);
  }

  // A button's request under way (an action, not a poll): it says it is at work (aria-busy,
  // and the stylesheet's progress cursor) until the answer, or its absence, is in.
  function isAction(evt) {
    var config = evt.detail.requestConfig || {};
    return (config.verb || evt.detail.verb || "get") !== "get";
  }
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (isAction(evt)) evt.detail.elt.setAttribute("aria-busy", "true");
  });

  document.addEventListener("htmx:afterRequest", function (evt) {
    if (isAction(evt)) evt.detail.elt.removeAttribute("aria-busy");
    var xhr = evt.detail.xhr;
    if (appError(evt)) {
      trouble(evt, "The server answered with an error (" + xhr.status + ")");
      return;
    }
    if (!xhr || xhr.status === 0 || xhr.status >= 500 || isPage(xhr) && xhr.status >= 400) {
      return;
    }
    lastHeard = new Date();
    var elt = evt.detail.elt;
    failing = failing.filter(function (e) { return e !== elt && e.isConnected; });
    var out = document.getElementById("connection-status");
    if (out && !failing.length) out.textContent = "";
  });

  // -- the library's worker watch, while rows are active ----------------------------------
  // The watch in #worker-status (templates/_macros.html, worker_status) asks whether a
  // worker serves the queue while a row of the page polls: once the last one has ended,
  // it goes, and the banner with it (what it said was of the tasks that were waiting).
  function endWorkerWatch() {
    var status = document.getElementById("worker-status");
    if (status && status.firstChild && !document.querySelector(".video-row[hx-get]")) {
      status.textContent = "";
    }
  }

  function ready() {
    setUpRoving();
    chooseCaptions();
    setUpUpload();
    setUpCopy();
    updateSelection();
    announce();
    setUpClock();
    countDown();
  }
  document.addEventListener("htmx:afterSettle", function () {
    endWorkerWatch();
    setUpRoving();
    chooseCaptions();  // the results came in with the run's last poll
    setUpCopy();
    updateSelection();
  });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
