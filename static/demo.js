// The demo page's script. It uses only the public API of longpoll.js (window.longpoll),
// which the tag's <script defer> defines before this deferred script runs.
(() => {
  "use strict";

  const LOG_LINES = 30; // messages kept in the "What arrived" list
  const CHAT_LINES = 50; // chat lines kept

  const $ = (id) => document.getElementById(id);

  function prepend(list, text, limit) {
    const item = document.createElement("li");
    item.textContent = text; // text only: a message never becomes markup
    list.prepend(item);
    while (list.children.length > limit) {
      list.lastElementChild.remove();
    }
    return item;
  }

  // Connection status and this tab's role.
  const ROLES = {
    leader: "this tab polls for every tab of this browser",
    follower: "this tab hears from the tab that polls",
    solo: "this tab polls on its own",
  };
  function showStatus(status) {
    $("status").textContent = status;
    $("status").className = "status status-" + status;
    $("role").textContent = ROLES[longpoll.role] || "";
  }
  longpoll.on("status", showStatus);
  showStatus(longpoll.status);

  longpoll.on("gap", () => {
    prepend($("log"), "(some messages were lost: a page would reload its state here)", LOG_LINES);
  });

  // Every message, raw.
  longpoll.on("*", (data, message) => {
    prepend($("log"), "#" + message.id + " " + message.type + " " + JSON.stringify(data), LOG_LINES);
  });

  // Pushed by the counter view. The click only asks; the push updates every tab.
  longpoll.on("demo.counter", (data) => {
    $("counter").textContent = data.value;
  });
  $("counter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button");
    // One request at a time: the count lives in the session, and two requests at once
    // would both read the old value.
    button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: {Accept: "application/json"},
      credentials: "same-origin",
    })
      .catch((error) => console.error("counter:", error))
      .finally(() => {
        button.disabled = false;
      });
  });

  // Ending the session (as a logout does) makes the server refuse the poll: every tab
  // shows "stopped". Reloading starts a new session.
  $("end-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: {Accept: "application/json"},
      credentials: "same-origin",
    }).catch((error) => console.error("end session:", error));
  });

  // Pushed by `manage.py demo_clock`.
  longpoll.on("demo.clock", (data) => {
    $("clock").textContent = new Date(data.time).toLocaleTimeString();
  });

  // Chat: sent with longpoll.send, answered by the server's handler with a push.
  const NAME_KEY = "longpoll-demo-name";
  $("chat-name").value =
    localStorage.getItem(NAME_KEY) || "guest-" + Math.floor(1000 + Math.random() * 9000);
  longpoll.on("chat.message", (data) => {
    const time = new Date(data.at).toLocaleTimeString();
    prepend($("chat-log"), time + "  " + data.name + ": " + data.text, CHAT_LINES);
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("chat-name").value.trim();
    const input = $("chat-text");
    const text = input.value.trim();
    if (!text) {
      return;
    }
    localStorage.setItem(NAME_KEY, name);
    input.value = "";
    longpoll.send("chat.message", {name, text}).catch((error) => {
      input.value = text; // give the line back to retry
      prepend($("chat-log"), "(not sent: " + error.message + ")", CHAT_LINES);
    });
  });
})();
