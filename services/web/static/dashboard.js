// p2pshare dashboard: refreshes the live parts of the page and sends its forms without a
// reload. Without this script the page still works: forms post and come back, and a reload
// shows the news. No build step; this file is all there is.
"use strict";
(function () {
  const POLL_MS = 1000;
  const main = document.getElementById("main");
  const note = document.getElementById("note");
  const csrf = main.dataset.csrf;
  let busy = false;

  function say(message, ok) {
    note.textContent = message;
    note.classList.toggle("error", !ok);
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const q = document.getElementById("q").value;
      const r = await fetch("/live?q=" + encodeURIComponent(q), {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (!r.ok) throw new Error((await r.json()).message || "The node did not answer.");
      const data = await r.json();
      const focused = document.activeElement && document.activeElement.id;
      for (const [name, html] of Object.entries(data.sections)) {
        const el = document.querySelector('[data-live="' + name + '"]');
        if (el && el.innerHTML !== html) el.innerHTML = html;
      }
      if (focused && document.activeElement !== document.getElementById(focused)) {
        const again = document.getElementById(focused);
        if (again) again.focus();
      }
      document.body.classList.remove("stale");
    } catch (err) {
      document.body.classList.add("stale");
      say("The dashboard lost touch with p2p-web; it keeps trying. (" + err.message + ")", false);
    } finally {
      busy = false;
    }
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!form.classList.contains("act")) return;
    event.preventDefault();
    try {
      const r = await fetch(form.action, {
        method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      });
      const data = await r.json();
      say(data.message, data.ok);
    } catch (err) {
      say("The request did not reach p2p-web; try again.", false);
    }
    refresh();
  });

  // Typing in the search box narrows the list at once, without a reload.
  document.getElementById("q").addEventListener("input", function () { refresh(); });
  setInterval(refresh, POLL_MS);
})();
