/*
 * longpoll.js: the browser side of the long-poll channel app for Django.
 *
 * Include it with the template tag ({% load longpoll %}{% longpoll_script %}); the tag
 * puts the URLs, the CSRF token and the hold timeout in data-* attributes of the
 * <script> element. No dependencies, no build step.
 *
 *   longpoll.on("chat.message", (data, message) => ...);  // "*" receives every message
 *   longpoll.off("chat.message", fn);
 *   longpoll.send("chat.message", {text: "hi"}).then(...);  // retried with the same id
 *   longpoll.status;  // "connecting" | "open" | "offline" | "stopped"
 *   longpoll.on("status", (status) => ...);
 *   longpoll.on("gap", (info) => ...);  // messages were lost: reload what you show
 *   longpoll.on("error", (error) => ...);  // the server refused us for good (403, 400...)
 *
 * Browsers allow about 6 connections per host over HTTP/1.1, so one held poll per tab
 * starves the page from the 7th tab on. The tabs of one origin therefore elect a leader
 * with the Web Locks API; only the leader polls, and it hands every answer to the other
 * tabs over a BroadcastChannel. Every tab keeps its own cursor (the id of the last
 * message it dispatched) and drops ids it has already seen, so a tab that takes over
 * after the leader closed continues from where it was: nothing lost, nothing twice.
 * Without those APIs (old browsers, pages that are not a secure context) each tab polls
 * on its own.
 *
 * Messages are only ever handed to listeners as data: nothing received is evaluated.
 */
(() => {
  "use strict";

  if (window.longpoll) {
    return; // included twice: the first copy already runs
  }

  const script =
    document.currentScript || document.querySelector("script[data-poll-url][data-send-url]");
  if (!script) {
    console.error("longpoll.js: include it with {% longpoll_script %}, which configures it.");
    return;
  }
  const config = {
    pollUrl: script.dataset.pollUrl,
    sendUrl: script.dataset.sendUrl,
    csrfToken: script.dataset.csrfToken,
    // When this page was loaded, in ms since the epoch: of two tabs' CSRF tokens, the
    // newer page's is the one that matches the cookie (a login rotates the token).
    tokenTime: performance.timeOrigin || Date.now(),
    // How long the server holds an empty poll before answering, in milliseconds.
    holdMs: (parseFloat(script.dataset.timeout) || 10) * 1000,
  };

  // Milliseconds added to the hold before a poll that got no answer is given up: it
  // covers a slow server and network, past that the connection is presumed dead.
  const GRACE_MS = 5000;
  // Errors are answered at once, so a poll still pending after this many milliseconds
  // is being held by the server: the channel is open.
  const OPEN_AFTER_MS = 500;
  // Backoff after failures, in milliseconds: doubles from BASE up to CAP, with jitter
  // so that browsers cut off together do not come back together.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 20000;
  // A send attempt without an answer after this many milliseconds is retried.
  const SEND_ATTEMPT_TIMEOUT_MS = 15000;
  // Attempts of one send before its Promise is rejected (about 30 s of backoff).
  const SEND_MAX_ATTEMPTS = 7;
  // Statuses after which retrying the same request may work.
  const RETRYABLE_STATUSES = new Set([429, 502, 503, 504]);
  // Names of the client's own events, and "*": message types must not use them.
  const RESERVED_TYPES = new Set(["status", "gap", "error", "*"]);
  // One lock and one channel per poll URL, shared by the tabs of this origin.
  const LOCK_NAME = "longpoll:" + new URL(config.pollUrl, location.href).pathname;

  const listeners = new Map(); // event or message type -> Set of functions
  const sleepers = new Set(); // functions that end a pending sleep early
  let status = "connecting";
  let cursor = null; // id of the last message dispatched in this tab; null before any
  let role = "starting"; // "leader", "follower" or "solo" (polls on its own); "stopped"
  let channel = null; // BroadcastChannel to the other tabs, when there are several
  let term = null; // this tab's poll loop: {active, inFlight, restart, abort, release}
  let lockRequest = null; // AbortController of our pending lock request

  // --- events -------------------------------------------------------------------------

  function on(type, fn) {
    if (!listeners.has(type)) {
      listeners.set(type, new Set());
    }
    listeners.get(type).add(fn);
  }

  function off(type, fn) {
    const set = listeners.get(type);
    if (set) {
      set.delete(fn);
    }
  }

  function emit(type, ...args) {
    // A copy, so that a listener may call on() or off() while we iterate.
    for (const fn of [...(listeners.get(type) || [])]) {
      try {
        fn(...args);
      } catch (error) {
        // One broken listener must not stop the others or the poll loop.
        if (typeof reportError === "function") {
          reportError(error);
        } else {
          console.error(error);
        }
      }
    }
  }

  function setStatus(next) {
    if (next === status) {
      return;
    }
    status = next;
    if (role === "leader") {
      broadcast({kind: "status", status: next});
    }
    emit("status", next);
  }

  // --- delivery -----------------------------------------------------------------------

  function deliver(batch) {
    // After a gap (messages dropped, or the session's ids restarted) ids may be at or
    // below our cursor and still be new: take the whole batch.
    const fresh = batch.gap
      ? batch.messages
      : batch.messages.filter((message) => cursor === null || message.id > cursor);
    const previous = cursor;
    if (batch.gap || cursor === null || batch.cursor > cursor) {
      cursor = batch.cursor;
    }
    if (batch.gap) {
      emit("gap", {previousCursor: previous, cursor: batch.cursor});
    }
    for (const message of fresh) {
      if (RESERVED_TYPES.has(message.type)) {
        console.warn("longpoll.js: message type " + message.type + " is reserved; use '*'");
      } else {
        emit(message.type, message.data, message);
      }
      emit("*", message.data, message);
    }
  }

  function broadcast(payload) {
    if (channel) {
      channel.postMessage(payload);
    }
  }

  function onChannelMessage(event) {
    const payload = event.data || {};
    switch (payload.kind) {
      case "batch":
        if (role !== "leader") {
          deliver(payload.batch);
        }
        break;
      case "status":
        if (role === "follower") {
          setStatus(payload.status);
        }
        break;
      case "hello":
        if (payload.csrfToken && payload.tokenTime > config.tokenTime) {
          config.csrfToken = payload.csrfToken;
          config.tokenTime = payload.tokenTime;
        }
        if (role === "leader") {
          broadcast({kind: "state", cursor, status});
        }
        break;
      case "state":
        // A tab that has dispatched nothing yet starts where the others are, so that it
        // continues from the shared cursor if it becomes the leader.
        if (role === "follower" && cursor === null) {
          cursor = payload.cursor;
        }
        if (role === "follower") {
          setStatus(payload.status);
        }
        break;
      default:
        break;
    }
  }

  // --- waiting ------------------------------------------------------------------------

  function sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      sleepers.add(done);
    });
  }

  function wakeSleepers() {
    for (const done of [...sleepers]) {
      done();
    }
  }

  function backoffMs(failures) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (failures - 1));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  function retryAfterMs(response) {
    const header = response.headers.get("Retry-After");
    if (!header) {
      return null;
    }
    const seconds = Number(header);
    const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
    if (!Number.isFinite(ms)) {
      return null;
    }
    // At least what the server asked, plus up to a fifth so that we do not all return
    // in the same instant.
    return Math.max(0, ms) * (1 + Math.random() / 5);
  }

  async function errorOf(response) {
    let body = {};
    try {
      body = await response.json();
    } catch (ignored) {
      // Not our JSON: a proxy's page, or an empty body.
    }
    const error = new Error(body.detail || "HTTP " + response.status);
    error.status = response.status;
    error.code = body.error || "http_" + response.status;
    return error;
  }

  function request(url, body, signal) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: {"Content-Type": "application/json", "X-CSRFToken": config.csrfToken},
      body,
      signal,
    });
  }

  // --- polling ------------------------------------------------------------------------

  // Polls until term.active is false. Returns a Promise that settles when the last poll
  // has ended, so that a new leader never overlaps with this one.
  async function pollLoop(current) {
    let failures = 0;
    while (current.active) {
      const controller = new AbortController();
      current.abort = () => controller.abort();
      current.inFlight = true;
      // A poll the server never answers (a dead connection, a proxy that swallowed it)
      // is given up after the hold plus a grace period.
      const deadline = setTimeout(() => controller.abort(), config.holdMs + GRACE_MS);
      const opened = setTimeout(() => setStatus("open"), OPEN_AFTER_MS);
      let delay = 0;
      try {
        const response = await request(
          config.pollUrl,
          JSON.stringify({cursor}),
          controller.signal,
        );
        if (response.status === 200) {
          const batch = await response.json();
          if (current.active) {
            failures = 0;
            setStatus("open");
            // Hand it to the other tabs before our own listeners run: a listener that
            // throws or navigates away must not keep it from them.
            if (role === "leader") {
              broadcast({kind: "batch", batch});
            }
            deliver(batch);
          }
        } else if (response.status === 204 || response.status === 304) {
          failures = 0;
          setStatus("open");
        } else {
          const error = await errorOf(response);
          if (!RETRYABLE_STATUSES.has(response.status) && response.status < 500) {
            // 400, 403 (no session, CSRF), 404, 405, 413: the same poll will fail again.
            console.error("longpoll.js: the server refused to poll:", error.code, error.message);
            emit("error", error);
            stop();
            break;
          }
          failures += 1;
          setStatus("connecting");
          delay = retryAfterMs(response) ?? backoffMs(failures);
        }
      } catch (error) {
        if (!current.active) {
          break;
        }
        if (current.restart) {
          // Aborted on purpose to poll again at once (the network came back).
          current.restart = false;
        } else {
          failures += 1;
          setStatus("offline");
          delay = backoffMs(failures);
        }
      } finally {
        current.inFlight = false;
        clearTimeout(deadline);
        clearTimeout(opened);
      }
      if (delay > 0 && current.active) {
        await sleep(delay);
      }
    }
  }

  function lead(asRole) {
    role = asRole;
    const current = {active: true, inFlight: false, restart: false, abort: () => {}};
    term = current;
    setStatus("connecting");
    if (asRole === "leader") {
      // Followers may still show the previous leader's status.
      broadcast({kind: "status", status});
    }
    return pollLoop(current);
  }

  // Stops polling in this tab at once: aborts the pending poll and gives up leadership.
  function resign() {
    if (term) {
      term.active = false;
      term.abort();
      if (term.release) {
        term.release(); // lets the next tab's lock request through now
      }
      term = null;
    }
    if (lockRequest) {
      lockRequest.abort();
      lockRequest = null;
    }
    wakeSleepers();
  }

  // --- joining and leaving --------------------------------------------------------------

  function join() {
    if (role !== "starting" && role !== "stopped") {
      return;
    }
    const canShare = navigator.locks && typeof BroadcastChannel === "function";
    if (!canShare) {
      lead("solo");
      return;
    }
    role = "follower";
    setStatus("connecting");
    if (!channel) {
      channel = new BroadcastChannel(LOCK_NAME);
      channel.onmessage = onChannelMessage;
    }
    broadcast({kind: "hello", csrfToken: config.csrfToken, tokenTime: config.tokenTime});
    const controller = new AbortController();
    lockRequest = controller;
    navigator.locks
      .request(LOCK_NAME, {signal: controller.signal}, () => {
        lockRequest = null;
        // Hold the lock until this Promise resolves: when the poll loop ends, or at once
        // when resign() is called (the tab is frozen or leaving).
        return new Promise((release) => {
          lead("leader").then(release, release);
          if (term) {
            term.release = release;
          }
        });
      })
      .catch(() => {
        // AbortError: we stopped waiting for the lock.
      });
  }

  function stop() {
    if (role === "leader") {
      broadcast({kind: "status", status: "stopped"});
    }
    resign();
    role = "stopped";
    setStatus("stopped");
  }

  function start() {
    if (role === "stopped") {
      join();
    }
  }

  function send(type, data) {
    return (async () => {
      // Serialised once, so every attempt carries the same id and the server handles the
      // message once however many of our attempts reach it.
      const body = JSON.stringify({id: newId(), type, data});
      for (let attempt = 1; ; attempt += 1) {
        const controller = new AbortController();
        const deadline = setTimeout(() => controller.abort(), SEND_ATTEMPT_TIMEOUT_MS);
        let response;
        try {
          response = await request(config.sendUrl, body, controller.signal);
        } catch (networkError) {
          if (attempt >= SEND_MAX_ATTEMPTS) {
            throw networkError;
          }
          await sleep(backoffMs(attempt));
          continue;
        } finally {
          clearTimeout(deadline);
        }
        if (response.ok) {
          return response.json();
        }
        const error = await errorOf(response);
        if (!RETRYABLE_STATUSES.has(response.status) || attempt >= SEND_MAX_ATTEMPTS) {
          throw error;
        }
        await sleep(retryAfterMs(response) ?? backoffMs(attempt));
      }
    })();
  }

  function newId() {
    // 128 random bits; crypto.getRandomValues also works outside secure contexts.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  // --- the page's life ----------------------------------------------------------------

  window.addEventListener("online", () => {
    // Whatever we were waiting for, the network is back: poll now. A poll pending from
    // before may sit on a dead connection, so replace it.
    if (term && term.inFlight) {
      term.restart = true;
      term.abort();
    }
    wakeSleepers();
  });
  window.addEventListener("offline", () => {
    if (role !== "stopped") {
      setStatus("offline");
    }
  });
  // A frozen or hidden-for-good tab must not keep the lock: another tab leads meanwhile.
  document.addEventListener("freeze", () => {
    if (role !== "stopped") {
      resign();
      role = "starting";
    }
  });
  document.addEventListener("resume", () => join());
  window.addEventListener("pagehide", () => {
    if (role !== "stopped") {
      resign();
      role = "starting";
    }
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      join(); // back from the back/forward cache
    }
  });

  window.longpoll = Object.freeze({
    on,
    off,
    send,
    start,
    stop,
    get status() {
      return status;
    },
    get cursor() {
      return cursor;
    },
    // "leader" polls for every tab, "follower" receives from the leader, "solo" polls
    // for itself (no Web Locks or BroadcastChannel), "stopped".
    get role() {
      return role;
    },
  });

  // Listeners are usually added by scripts that run after this one (deferred scripts run
  // in order): start once the document is parsed, so that the first answer finds them.
  if (document.readyState === "complete") {
    join();
  } else {
    const once = () => {
      document.removeEventListener("DOMContentLoaded", once);
      window.removeEventListener("load", once);
      join();
    };
    document.addEventListener("DOMContentLoaded", once);
    window.addEventListener("load", once);
  }
})();
