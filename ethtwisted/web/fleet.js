// The fleet view: how many clients are in each state (a filter too), a filter by name, the
// clients grouped by chain and sorted by lag, delay or name, a page of rows at a time.
var Fleet = (function () {
  "use strict";
  var P = Page, $ = P.$, el = P.el, chip = P.chip, number = P.number, age = P.age;
  var delay = P.delay, chainName = P.chainName, now = P.now, STATES = P.STATES;
  var SHOWN_STATES = ["current", "behind", "stalled", "silent", "syncing", "fork"];
  var PAGE_ROWS = 100;
  var view = { state: null, name: "", sort: "lag", page: 0 };
  var clients = [];
  var delays = {};  // client → its delays at the blocks of the propagation picture
  var drawn = false;

  // Show these clients (and their delays), as the view is set.
  function show(listed, spark) {
    clients = listed;
    delays = spark;
    render();
  }

  function named(c) {
    var states = c.states && typeof c.states === "object" ? c.states : null;
    return states ? STATES.filter(function (s) { return Object.prototype.hasOwnProperty.call(states, s); }) : [];
  }
  function stateOf(c) { return typeof c.state === "string" ? c.state : "unwatched"; }
  function p50(c) { var p = c.propagation || {}; return typeof p.p50_ms === "number" ? p.p50_ms : -1; }

  // The clients the view shows, grouped by chain (by id), sorted in each group.
  function selected(clients) {
    var name = view.name.toLowerCase();
    var rows = clients.filter(function (c) {
      return (view.state === null || stateOf(c) === view.state) &&
        (!name || c.client.toLowerCase().indexOf(name) >= 0);
    });
    var order = {
      lag: function (a, b) { return (b.lag === null ? -1 : b.lag) - (a.lag === null ? -1 : a.lag); },
      delay: function (a, b) { return p50(b) - p50(a); },
      name: function () { return 0; }
    }[view.sort];
    return rows.sort(function (a, b) {
      var ca = a.chain_id === null ? Infinity : a.chain_id, cb = b.chain_id === null ? Infinity : b.chain_id;
      return ca - cb || order(a, b) || (a.client < b.client ? -1 : a.client > b.client ? 1 : 0);
    });
  }

  function renderCounts(clients) {
    var counts = {};
    clients.forEach(function (c) { counts[stateOf(c)] = (counts[stateOf(c)] || 0) + 1; });
    var box = $("state-counts");
    box.replaceChildren();
    var shown = [null].concat(SHOWN_STATES, counts.unwatched ? ["unwatched"] : []);
    shown.forEach(function (s) {
      var button = el("button", "count" + (view.state === s ? " on" : ""));
      button.type = "button";
      button.dataset.state = s === null ? "all" : s;
      button.appendChild(s === null ? el("span", "chip", "all") : chip(s, s));
      button.appendChild(el("span", "n", s === null ? clients.length : (counts[s] || 0)));
      button.addEventListener("click", function () {
        view.state = view.state === s ? null : s;
        view.page = 0;
        render();
      });
      box.appendChild(button);
    });
  }

  function render() {
    if (!drawn && clients.length) { drawn = true; performance.mark("fleet-drawn"); }
    renderCounts(clients);
    var rows = selected(clients);
    var pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    view.page = Math.min(view.page, pages - 1);
    var first = view.page * PAGE_ROWS;
    var page = rows.slice(first, first + PAGE_ROWS);
    var body = document.querySelector("#clients tbody");
    body.replaceChildren();
    var groups = {};
    rows.forEach(function (c) { var k = chainName(c.chain_id); groups[k] = (groups[k] || 0) + 1; });
    var bad = 0;
    clients.forEach(function (c) { if (alerting(c)) { bad += 1; } });
    var group = null;
    page.forEach(function (c) {
      if (chainName(c.chain_id) !== group) {
        group = chainName(c.chain_id);
        var head = el("tr", "group");
        head.dataset.chain = group;
        var td = el("td", "", "chain " + group + " · " + groups[group] +
                    (groups[group] === 1 ? " client" : " clients"));
        td.colSpan = 12;
        head.appendChild(td);
        body.appendChild(head);
      }
      body.appendChild(clientRow(c, delays[c.client]));
    });
    if (!clients.length) { P.emptyRow(body, 12, "no client has sent anything yet"); }
    else if (!rows.length) { P.emptyRow(body, 12, "no client matches"); }
    $("fleet-shown").textContent = rows.length ? (first + 1) + "–" + (first + page.length) + " of " +
      rows.length + (rows.length === clients.length ? "" : " (of " + clients.length + ")") : "0 of " + clients.length;
    $("prev").disabled = view.page === 0;
    $("next").disabled = view.page >= pages - 1;
    $("client-count").textContent = clients.length;
    $("client-note").textContent = bad ? bad + " not current" : "all current";
  }

  function alerting(c) {
    return now() - c.last_seen > P.QUIET_SECONDS || (c.lag !== null && c.lag > P.LAG_LIMIT) || named(c).length > 0;
  }

  function clientRow(c, delays) {
    var quiet = now() - c.last_seen > P.QUIET_SECONDS;
    var behind = c.lag !== null && c.lag > P.LAG_LIMIT;
    var states = c.states && typeof c.states === "object" ? c.states : null;
    var alert = alerting(c);
    var tr = el("tr", alert ? "bad" : "ok");
    tr.dataset.client = c.client;
    tr.dataset.state = stateOf(c);
    var name = el("td", "name");
    name.appendChild(el("span", "dot"));
    name.appendChild(document.createTextNode(c.client));
    name.title = c.client + " at " + c.address + ", " + number(c.messages) + " messages";
    tr.appendChild(name);
    tr.appendChild(stateCell(states, named(c)));
    tr.appendChild(el("td", "", chainName(c.chain_id)));
    tr.appendChild(el("td", "num head", number(c.last_block)));
    tr.appendChild(el("td", "num lag" + (behind ? " alert" : ""), c.lag === null ? "–" : c.lag));
    tr.appendChild(el("td", "num seen" + (quiet ? " alert" : ""), age(now() - c.last_seen) + " ago"));
    var node = c.node || {};
    var version = el("td", "version", node.client_version || "–");
    version.title = node.client_version || "";
    tr.appendChild(version);
    tr.appendChild(el("td", "num peers", number(node.peers)));
    tr.appendChild(el("td", "sync", P.syncState(node.syncing)));
    var propagation = c.propagation || {};
    tr.appendChild(el("td", "num p50", delay(propagation.p50_ms)));
    tr.appendChild(el("td", "num p95", delay(propagation.p95_ms)));
    var spark = el("td", "sparkline");
    if (delays) { spark.appendChild(Pictures.sparkline(delays)); }
    tr.appendChild(spark);
    return tr;
  }

  function stateCell(states, names) {
    var td = el("td", "states");
    if (!states) {
      td.textContent = "–";
      td.title = "not watched: an older or one-shot client";
      return td;
    }
    if (!names.length) { td.appendChild(chip("current", "current")); return td; }
    names.forEach(function (name) {
      var s = states[name] || {};
      var since = typeof s.since === "number" ? s.since : now();
      var c = chip(name, name + " " + age(now() - since));
      c.dataset.since = String(since);
      c.title = name + " since " + P.utc(since) +
        (typeof s.head === "number" ? ", at block " + number(s.head) : "") +
        (typeof s.best_head === "number" ? " of " + number(s.best_head) : "");
      td.appendChild(c);
    });
    return td;
  }

  $("filter-name").addEventListener("input", function (e) {
    view.name = e.target.value;
    view.page = 0;
    render();
  });
  $("sort").addEventListener("change", function (e) { view.sort = e.target.value; render(); });
  $("prev").addEventListener("click", function () { view.page = Math.max(0, view.page - 1); render(); });
  $("next").addEventListener("click", function () { view.page += 1; render(); });

  return { show: show, render: render };
})();
