// The trio-realtime dashboard: a browser client of the broker's own WebSocket protocol
// (docs/protocol.rst), in plain JavaScript with no library and no build step.
//
// It connects to the broker (?ws=URL, else the side port's /config.json, else port 8765 on
// this page's host), says hello (with ?token=TOKEN when the broker authenticates), subscribes
// to $sys.stats for the figures and the chart, and tails a pattern the viewer types.
"use strict";

const STATS_SUB = 1;        // the subscription id of $sys.stats
const HISTORY_SECONDS = 300; // how much of the rates the chart shows
const TAIL_MAX = 100;        // events kept in the live tail (newest on top)
const TOPICS_SHOWN = 10;     // rows of the busiest topics
const RECONNECT_MS = 2000;

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

let socket = null;
let tail = null;             // {id, pattern} of the live tail's subscription
let nextId = STATS_SUB + 1;
let previous = null;         // the last $sys.stats figures, for rates
const rates = [];            // [{t, in, out}] over the last HISTORY_SECONDS
const topicCounts = new Map();

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function setStatus(text) {
  $("status").textContent = text;
}

async function brokerUrl() {
  if (params.get("ws")) return params.get("ws");
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) {
      const config = await response.json();
      if (config.ws) return config.ws;
    }
  } catch (_) { /* no side port config: fall back to the default */ }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.hostname || "127.0.0.1"}:8765`;
}

async function connect() {
  const url = await brokerUrl();
  setStatus(`connecting to ${url}…`);
  socket = new WebSocket(url, "trio-realtime.v1");
  socket.onopen = () => {
    send({ type: "hello", protocol: 1, client: "dashboard", token: tokenValue() });
  };
  socket.onmessage = (message) => {
    const parsed = JSON.parse(message.data);
    for (const frame of Array.isArray(parsed) ? parsed : [parsed]) handle(frame);
  };
  socket.onclose = (close) => {
    setStatus(`disconnected from ${url} (${close.code}${close.reason ? ": " + close.reason : ""}); retrying…`);
    previous = null;
    setTimeout(connect, RECONNECT_MS);
  };
}

function tokenValue() {
  return params.get("token") || null;
}

function handle(frame) {
  switch (frame.type) {
    case "welcome":
      setStatus(`connected to ${frame.broker} (session ${frame.session}` +
        (frame.user ? `, user ${frame.user}` : "") + ")");
      send({ type: "subscribe", id: STATS_SUB, pattern: "$sys.stats" });
      if (tail) subscribeTail(tail.pattern);
      break;
    case "ping":
      send({ type: "pong" });
      break;
    case "event":
      if (frame.subs.includes(STATS_SUB)) showStats(frame.event);
      if (tail && frame.subs.includes(tail.id)) showTailEvent(frame.event);
      break;
    case "error":
      if (tail && frame.ref === tail.id) {
        $("tail-info").textContent = `Tail of ${tail.pattern} refused: ${frame.message}`;
        tail = null;
      } else {
        setStatus(`error from the broker: ${frame.code}: ${frame.message}`);
      }
      break;
    case "subscribed":
      if (tail && frame.id === tail.id) {
        $("tail-info").textContent = `Tailing ${tail.pattern} (newest on top, last ${TAIL_MAX} kept).`;
      }
      break;
    default: // unsubscribed, gap, pong …: nothing to show
  }
}

// ---- figures and chart ------------------------------------------------------------------

function showStats(event) {
  const s = event.data;
  const t = Date.parse(event.time) / 1000;
  for (const key of ["connections", "connections_total", "subscriptions", "dropped"]) {
    $(key).textContent = s[key];
  }
  if (previous && t > previous.t) {
    const dt = t - previous.t;
    const point = { t, in: (s.events_in - previous.s.events_in) / dt,
                    out: (s.events_out - previous.s.events_out) / dt };
    rates.push(point);
    while (rates.length && rates[0].t < t - HISTORY_SECONDS) rates.shift();
    $("rate_in").textContent = point.in.toFixed(1);
    $("rate_out").textContent = point.out.toFixed(1);
    drawChart();
  }
  previous = { t, s };
  fillTable($("errors"), Object.entries(s.errors));
  fillTable($("limits"), Object.entries(s.limits));
}

function fillTable(table, rows) {
  table.replaceChildren();
  if (rows.length === 0) rows = [["none", ""]];
  for (const [name, value] of rows.sort((a, b) => b[1] - a[1])) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value;
  }
}

const SVG = "http://www.w3.org/2000/svg";

function drawChart() {
  const svg = $("chart");
  const [width, height] = [600, 150];
  const now = rates[rates.length - 1].t;
  const top = Math.max(1, ...rates.map((p) => Math.max(p.in, p.out))) * 1.1;
  const x = (t) => width - ((now - t) / HISTORY_SECONDS) * width;
  const y = (v) => height - (v / top) * height;
  svg.replaceChildren();
  for (const series of ["in", "out"]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", series);
    line.setAttribute("points", rates.map((p) => `${x(p.t).toFixed(1)},${y(p[series]).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 4);
  label.setAttribute("y", 12);
  label.textContent = `max ${top.toFixed(1)}/s`;
  svg.append(label);
}

// ---- live tail --------------------------------------------------------------------------

function subscribeTail(pattern) {
  tail = { id: nextId++, pattern };
  send({ type: "subscribe", id: tail.id, pattern });
}

function startTail(pattern) {
  stopTail();
  pattern = pattern.trim();
  if (!pattern) return;
  $("tail").replaceChildren();
  topicCounts.clear();
  showTopics();
  subscribeTail(pattern);
  $("tail-info").textContent = `Subscribing to ${pattern}…`;
}

function stopTail() {
  if (!tail) return;
  send({ type: "unsubscribe", id: tail.id });
  $("tail-info").textContent = `Stopped tailing ${tail.pattern}.`;
  tail = null;
}

function showTailEvent(event) {
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = event.time.slice(11, 23);
  const topic = document.createElement("span");
  topic.className = "topic";
  topic.textContent = event.topic;
  const data = document.createElement("span");
  const text = JSON.stringify(event.data);
  data.textContent = text.length > 500 ? text.slice(0, 500) + "…" : text;
  item.append(time, " ", topic, " ", data);
  const list = $("tail");
  list.prepend(item);
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
  topicCounts.set(event.topic, (topicCounts.get(event.topic) || 0) + 1);
  showTopics();
}

function showTopics() {
  const rows = [...topicCounts.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOPICS_SHOWN);
  const table = $("topics");
  table.replaceChildren();
  for (const [name, count] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = count;
  }
}

$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  startTail($("tail-pattern").value);
});
$("tail-stop").addEventListener("click", stopTail);
if (params.get("tail")) {
  $("tail-pattern").value = params.get("tail");
  startTail(params.get("tail"));
}
connect();
