// What the dashboard's scripts share: elements, the server's clock, how values are written,
// the states, and the limits the address gives (?lag=N&quiet=SECONDS).
var Page = (function () {
  "use strict";
  // The fleet view's states, each explaining those after it (as the API's "state" does).
  var STATES = ["silent", "syncing", "fork", "stalled", "behind"];
  var skew = 0;  // server clock minus this browser's, in seconds
  var params = new URLSearchParams(location.search);

  function positive(text, fallback) {
    var n = Number(text);
    return text !== null && isFinite(n) && n > 0 ? n : fallback;
  }
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function emptyRow(body, columns, text) {
    var td = el("td", "empty", text);
    td.colSpan = columns;
    var tr = el("tr");
    tr.appendChild(td);
    body.appendChild(tr);
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }
  function now() { return Date.now() / 1000 + skew; }
  function age(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) { return seconds + " s"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s"; }
    if (seconds < 86400) { return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min"; }
    return Math.floor(seconds / 86400) + " d";
  }
  function chainName(id) { return id === null ? "unknown" : String(id); }
  function shortHash(h) { return h ? h.slice(0, 10) + "…" + h.slice(-6) : "–"; }
  function number(n) { return n === null || n === undefined ? "–" : n.toLocaleString("en-US"); }
  function delay(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) { return "–"; }
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
  }
  function utc(t) { return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }
  function chip(state, text) {
    var e = el("span", "chip" + (state === "current" || STATES.indexOf(state) >= 0 ? " " + state : ""), text);
    e.dataset.state = state;
    return e;
  }
  function syncState(syncing) {
    if (syncing === false) { return "synced"; }
    if (syncing && typeof syncing === "object") {
      return "syncing " + number(syncing.current) + " / " + number(syncing.highest);
    }
    return "–";
  }
  function setNow(serverNow) { skew = serverNow - Date.now() / 1000; }

  return { STATES: STATES, LAG_LIMIT: positive(params.get("lag"), 2),
           QUIET_SECONDS: positive(params.get("quiet"), 60), $: $, el: el, emptyRow: emptyRow,
           svg: svg, now: now, setNow: setNow, age: age, chainName: chainName,
           shortHash: shortHash, number: number, delay: delay, utc: utc, chip: chip,
           syncState: syncState };
})();
