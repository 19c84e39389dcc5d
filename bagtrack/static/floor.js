// What the scanner page and the bill-loading page share: a scan queue kept in
// the browser's storage, and the sounds of the floor.
//
// Every scan is written to localStorage before it is sent, so a dead Wi-Fi, a
// restarting server, a reload or a closed tab loses nothing. Scans are sent
// one at a time in the order they were scanned, each with a timeout; a scan
// that got no answer stays first in the queue and is sent again with a
// growing pause (and at once when the browser says the network is back).
// A scan answered at all (accepted or refused) leaves the queue: sending it
// again is safe because a repeated scan is a harmless duplicate. A scan
// refused after it had to wait is kept in a "refused after reconnect" list
// until the worker dismisses it. An expired session or a stale page keeps the
// scans queued and offers "Log in again".
(function () {
  "use strict";

  const TIMEOUT_MS = 8000;
  const RETRY_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  const LOGIN_ERRORS = new Set(["login_required", "session_expired", "csrf_failed"]);

  // Web Audio tones; one context for the page, made on the first key press
  // (browsers start sound only after the user did something).
  let audio = null;
  const TONES = {
    accepted: [[880, 0.09, "sine"]],
    duplicate: [[660, 0.07, "sine"], [0, 0.05], [660, 0.07, "sine"]],
    complete: [[523, 0.12, "sine"], [659, 0.12, "sine"], [784, 0.3, "sine"]],
    refused: [[196, 0.45, "square"]],
  };

  function wakeAudio() {
    if (audio === null && typeof AudioContext === "function") {
      try {
        audio = new AudioContext();
      } catch (error) {
        audio = false;
      }
    }
    if (audio && audio.state === "suspended") {
      audio.resume();
    }
  }

  function sound(name) {
    if (name === "refused" && navigator.vibrate) {
      navigator.vibrate([200, 100, 200]);
    }
    wakeAudio();
    if (!audio) {
      return;
    }
    let at = audio.currentTime;
    for (const [frequency, seconds, wave] of TONES[name]) {
      if (frequency) {
        const tone = audio.createOscillator();
        const volume = audio.createGain();
        tone.type = wave;
        tone.frequency.value = frequency;
        volume.gain.value = 0.3;
        tone.connect(volume);
        volume.connect(audio.destination);
        tone.start(at);
        tone.stop(at + seconds);
      }
      at += seconds;
    }
  }

  document.addEventListener("keydown", wakeAudio, { capture: true });
  document.addEventListener("pointerdown", wakeAudio, { capture: true });

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // A page that came from the offline copy carries an old token: read the current one.
  async function refreshToken() {
    try {
      const response = await fetch(location.pathname, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok || response.redirected) {
        return false;
      }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector('meta[name="csrf-token"]');
      if (!fresh || !fresh.content || fresh.content === csrfToken()) {
        return false;
      }
      document.querySelector('meta[name="csrf-token"]').content = fresh.content;
      return true;
    } catch (error) {
      return false;
    }
  }

  function load(key) {
    try {
      const stored = JSON.parse(localStorage.getItem(key) || "[]");
      return Array.isArray(stored) ? stored : [];
    } catch (error) {
      return [];
    }
  }

  // One queue per page kind and user: another worker's scans on a shared handheld are never sent as yours.
  // options: name, user, loginUrl(), onAnswer(scan, answer, replayed), describe(scan)
  function ScanQueue(options) {
    const box = document.getElementById("queue-box");
    const count = document.getElementById("queue-count");
    const state = document.getElementById("queue-state");
    const waitingList = document.getElementById("queue-waiting");
    const login = document.getElementById("queue-login");
    const refusedBox = document.getElementById("queue-refused");
    const refusedList = document.getElementById("queue-refused-list");
    const queueKey = `bagtrack.queue.${options.name}.${options.user}`;
    const refusedKey = `bagtrack.refused.${options.name}.${options.user}`;
    let sending = false;
    let failures = 0;
    let retryTimer = null;
    let needsLogin = false;

    function save(key, items) {
      localStorage.setItem(key, JSON.stringify(items));
    }

    function render(mode, detail) {
      const waiting = load(queueKey);
      count.textContent = String(waiting.length);
      box.dataset.state = mode;
      state.textContent = detail;
      waitingList.replaceChildren(
        ...waiting.map((scan) => {
          const item = document.createElement("li");
          item.textContent = options.describe(scan);
          return item;
        }),
      );
      login.hidden = !needsLogin;
      login.href = options.loginUrl();
      const refused = load(refusedKey);
      refusedBox.hidden = refused.length === 0;
      refusedList.replaceChildren(...refused.map(refusedItem));
    }

    function refusedItem(entry) {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.textContent = `${options.describe(entry.scan)}: ${entry.message}`;
      item.append(text);
      for (const action of entry.actions || []) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = action.label;
        button.addEventListener("click", () => {
          dismiss(entry.id);
          add(action.scan);
        });
        item.append(button);
      }
      const dismissButton = document.createElement("button");
      dismissButton.type = "button";
      dismissButton.textContent = "Dismiss";
      dismissButton.addEventListener("click", () => dismiss(entry.id));
      item.append(dismissButton);
      return item;
    }

    function dismiss(id) {
      save(
        refusedKey,
        load(refusedKey).filter((entry) => entry.id !== id),
      );
      render(box.dataset.state, state.textContent);
    }

    function keepRefused(scan, answer, actions) {
      const refused = load(refusedKey);
      refused.push({ id: scan.id, scan: scan, message: answer.message, actions: actions || [] });
      save(refusedKey, refused);
    }

    async function post(scan) {
      const body = new FormData();
      for (const [name, value] of Object.entries(scan.fields)) {
        body.set(name, value);
      }
      body.set("csrf_token", csrfToken());
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), TIMEOUT_MS);
      try {
        const response = await fetch(scan.url, {
          method: "POST",
          body: body,
          credentials: "same-origin",
          signal: stop.signal,
          headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
        });
        const answer = await response.json();
        if (typeof answer.ok !== "boolean" || response.status >= 500 || answer.error === "rate_limited") {
          return null;
        }
        return answer;
      } catch (error) {
        return null; // no connection, a timeout, or something that is not our JSON (a proxy's error page)
      } finally {
        clearTimeout(timer);
      }
    }

    function retryLater() {
      const pause = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      failures += 1;
      const reason = navigator.onLine ? "no answer from the server" : "no network";
      render("offline", `${reason}, trying again in ${Math.round(pause / 1000)} s`);
      clearTimeout(retryTimer);
      retryTimer = setTimeout(drain, pause);
    }

    async function sendAll() {
      let tokenRefreshed = false;
      for (;;) {
        const waiting = load(queueKey);
        if (waiting.length === 0) {
          failures = 0;
          render("idle", "all sent");
          return;
        }
        const scan = waiting[0];
        render("sending", "sending…");
        const answer = await post(scan);
        if (answer === null) {
          scan.tries = (scan.tries || 0) + 1;
          save(queueKey, [scan, ...load(queueKey).slice(1)]);
          retryLater();
          return;
        }
        if (!answer.ok && LOGIN_ERRORS.has(answer.error)) {
          if (answer.error === "csrf_failed" && !tokenRefreshed) {
            tokenRefreshed = true;
            if (await refreshToken()) {
              continue;
            }
          }
          needsLogin = true;
          render("login", "your session has ended: log in again, nothing is lost");
          return;
        }
        needsLogin = false;
        failures = 0;
        const replayed = Boolean(scan.tries || scan.restored);
        const rest = load(queueKey).slice(1);
        save(queueKey, options.afterAnswer ? options.afterAnswer(scan, answer, rest) : rest);
        const actions = options.onAnswer(scan, answer, replayed);
        if (!answer.ok && replayed) {
          keepRefused(scan, answer, actions);
        }
      }
    }

    async function drain() {
      clearTimeout(retryTimer);
      if (sending || needsLogin) {
        return;
      }
      sending = true;
      try {
        // One tab at a time sends a user's queue.
        if (navigator.locks) {
          await navigator.locks.request(queueKey, sendAll);
        } else {
          await sendAll();
        }
      } finally {
        sending = false;
      }
    }

    function add(fields) {
      const scan = {
        id: `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
        url: fields.url,
        fields: fields.fields,
        at: new Date().toISOString(),
      };
      const waiting = load(queueKey);
      waiting.push(scan);
      save(queueKey, waiting);
      render(box.dataset.state || "idle", state.textContent);
      drain();
      return scan;
    }

    // Scans left from before this page was opened are replays.
    const restored = load(queueKey).map((scan) => ({ ...scan, restored: true }));
    save(queueKey, restored);
    window.addEventListener("online", () => {
      failures = 0;
      drain();
    });
    render("idle", restored.length ? "sending what was waiting…" : "all sent");
    drain();

    return {
      add: add,
      waiting: () => load(queueKey),
    };
  }

  // The offline copy of the page: a service worker, where the browser has them (HTTPS or localhost).
  const queueBox = document.getElementById("queue-box");
  if ("serviceWorker" in navigator && queueBox && queueBox.dataset.serviceWorker) {
    navigator.serviceWorker.register(queueBox.dataset.serviceWorker).catch(() => {});
  }

  window.bagtrackFloor = { ScanQueue: ScanQueue, sound: sound };
})();
