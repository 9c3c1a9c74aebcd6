// The dashboard: polls the JSON API (with the stats token as a bearer header) and shows its
// answers: the heads, the rate, the pictures (pictures.js), the fleet, the changes of state
// and the recent blocks.
(function () {
  "use strict";
  var KEY = "ethtwisted-token";
  var POLL_MS = 2000;
  var params = new URLSearchParams(location.search);
  var LAG_LIMIT = positive(params.get("lag"), 2);
  var QUIET_SECONDS = positive(params.get("quiet"), 60);
  var token = null;
  if (params.has("token")) {
    token = params.get("token");
    try { sessionStorage.setItem(KEY, token); } catch (e) { /* memory only */ }
    params.delete("token");
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  } else {
    try { token = sessionStorage.getItem(KEY); } catch (e) { token = null; }
  }

  // The fleet view's states, each explaining those after it (as the API's "state" does).
  var STATES = ["silent", "syncing", "fork", "stalled", "behind"];
  var SHOWN_STATES = ["current", "behind", "stalled", "silent", "syncing", "fork"];
  var EVENTS = 20;
  var PAGE_ROWS = 100;      // the fleet view's rows per page
  var CLIENT_PAGES = 50;    // the most pages of /api/v1/clients read per poll
  var CHAINS = 4;           // the chains drawn
  var TIMES = 100;          // heights of the block times
  var HEIGHTS = 20;         // heights of the chain as the fleet saw it
  var BLOCKS = 20;          // blocks per chain in the propagation picture and sparklines
  var YOUNG = 60;           // a block's sightings are read again while it is this young (s)
  var skew = 0;  // server clock minus this browser's, in seconds
  var last = null;
  var opened = null;  // the recent block whose sightings are shown: {sha256, sightings, error}
  var picked = null;  // the block picked in the chain picture, likewise
  var sightings = {};  // sha256 → {at (when read), sightings}
  var view = { state: null, name: "", sort: "lag", page: 0 };
  var drawnOnce = false;

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
    if (text !== undefined) { e.textContent = text; }
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

  function get(path) {
    var headers = token ? { "Authorization": "Bearer " + token } : {};
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        try { sessionStorage.removeItem(KEY); } catch (e) { /* nothing stored */ }
        throw new Error("the stats token is missing or wrong: reload with ?token=");
      }
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  // Every client, page after page while the API says there are more (`next`, with
  // ?after=); an API without paging answers them all at once.
  function allClients() {
    var clients = [];
    function page(after, n) {
      var path = "/api/v1/clients?limit=1000" + (after === null ? "" : "&after=" + encodeURIComponent(after));
      return get(path).then(function (body) {
        clients = clients.concat(body.clients);
        var next = typeof body.next === "string" ? body.next : null;
        return next !== null && n < CLIENT_PAGES ? page(next, n + 1) : clients;
      });
    }
    return page(null, 1);
  }

  function chainBlocks(heads) {
    return Promise.all(heads.filter(function (h) { return h.chain_id !== null; }).slice(0, CHAINS)
      .map(function (h) {
        var low = Math.max(0, h.number - TIMES);
        return get("/api/v1/chains/" + h.chain_id + "/blocks?from=" + low + "&to=" + h.number)
          .catch(function () { return null; });
      })).then(function (chains) { return chains.filter(function (c) { return c !== null; }); });
  }

  function poll() {
    // The changes of state are shown when the store has them; their trouble is said in place.
    var events = get("/api/v1/events?limit=" + EVENTS).then(function (body) {
      return { events: Array.isArray(body.events) ? body.events : [], error: null };
    }, function (err) { return { events: [], error: err.message }; });
    var heads = get("/api/v1/head");
    Promise.all([
      heads, allClients(), get("/api/v1/blocks?limit=15"), get("/api/v1/arrivals?minutes=60"),
      events, heads.then(function (h) { return chainBlocks(h.heads); })
    ]).then(function (answers) {
      skew = answers[0].now - Date.now() / 1000;
      last = { heads: answers[0].heads, clients: answers[1], blocks: answers[2].blocks,
               arrivals: answers[3], events: answers[4], chains: answers[5] };
      render();
      var status = $("status");
      status.className = "live";
      status.textContent = "live";
      return readSightings();
    }).catch(function (err) {
      var status = $("status");
      status.className = "down";
      status.textContent = err.message;
    }).then(function () { setTimeout(poll, POLL_MS); });
  }

  // The blocks of the propagation picture: the last BLOCKS canonical blocks of each chain.
  function propagationBlocks() {
    var blocks = [];
    (last ? last.chains : []).forEach(function (chain) {
      Pictures.canonicalOf(chain).slice(-BLOCKS).forEach(function (b) {
        blocks.push({ sha256: b.sha256, number: b.number, chain_id: chain.chain_id,
                      first_seen: b.first_seen });
      });
    });
    return blocks;
  }

  // Who saw each of them when, read once, and again while the block is young; four at a time.
  function readSightings() {
    var wanted = propagationBlocks().filter(function (b) {
      var known = sightings[b.sha256];
      return !known || (known.at - b.first_seen < YOUNG && now() - known.at > POLL_MS / 1000);
    });
    var keep = {};
    propagationBlocks().forEach(function (b) { keep[b.sha256] = true; });
    Object.keys(sightings).forEach(function (sha) { if (!keep[sha]) { delete sightings[sha]; } });
    function next() {
      var b = wanted.shift();
      if (!b) { return Promise.resolve(); }
      return get("/api/v1/blocks/" + b.sha256).then(function (body) {
        sightings[b.sha256] = { at: now(), sightings: Array.isArray(body.sightings) ? body.sightings : [] };
      }, function () { /* drawn without it; read again at the next poll */ }).then(next);
    }
    if (!wanted.length) { return Promise.resolve(); }
    return Promise.all([next(), next(), next(), next()]).then(function () {
      renderPropagation();
      renderFleet();
    });
  }

  function render() {
    if (!last) { return; }
    renderHeads(last.heads);
    renderRate(last.arrivals);
    renderFleet();
    renderPictures();
    renderEvents(last.events);
    renderBlocks(last.blocks);
    renderArrivals(last.arrivals);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (!drawnOnce && last.clients.length) {
      drawnOnce = true;
      performance.mark("fleet-drawn");
    }
  }

  function renderHeads(heads) {
    var box = $("heads");
    box.replaceChildren();
    if (!heads.length) { box.appendChild(el("div", "empty", "no blocks yet")); return; }
    heads.forEach(function (h) {
      var row = el("div", "head");
      row.dataset.chain = chainName(h.chain_id);
      row.appendChild(el("span", "chain", "chain " + chainName(h.chain_id)));
      row.appendChild(el("span", "number", "#" + number(h.number)));
      row.title = h.hash || "";
      box.appendChild(row);
    });
  }

  function renderRate(a) {
    var rate = a.rate || {};
    $("bpm").textContent = typeof rate.per_minute === "number" ? rate.per_minute.toFixed(1) : "–";
    var over = typeof rate.seconds === "number" ? rate.seconds : 600;
    $("bpm-note").textContent = "payloads first seen, over the last " +
      (over >= 600 ? "10 minutes" : age(over) + " (since the first)");
  }

  // -- the fleet ---------------------------------------------------------------------------

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
        renderFleet();
      });
      box.appendChild(button);
    });
  }

  function renderFleet() {
    if (!last) { return; }
    var clients = last.clients;
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
    var delays = clientDelays();
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
    if (!clients.length) { emptyRow(body, 12, "no client has sent anything yet"); }
    else if (!rows.length) { emptyRow(body, 12, "no client matches"); }
    $("fleet-shown").textContent = rows.length ? (first + 1) + "–" + (first + page.length) + " of " +
      rows.length + (rows.length === clients.length ? "" : " (of " + clients.length + ")") : "0 of " + clients.length;
    $("prev").disabled = view.page === 0;
    $("next").disabled = view.page >= pages - 1;
    $("client-count").textContent = clients.length;
    $("client-note").textContent = bad ? bad + " not current" : "all current";
  }

  function alerting(c) {
    return now() - c.last_seen > QUIET_SECONDS || (c.lag !== null && c.lag > LAG_LIMIT) || named(c).length > 0;
  }

  // Each client's delay at each block of its chain's propagation picture, oldest first.
  function clientDelays() {
    var delays = {};
    var byChain = {};
    propagationBlocks().forEach(function (b) { (byChain[b.chain_id] = byChain[b.chain_id] || []).push(b); });
    Object.keys(byChain).forEach(function (chainId) {
      var blocks = byChain[chainId];
      blocks.forEach(function (b, i) {
        var known = sightings[b.sha256];
        if (!known) { return; }
        known.sightings.forEach(function (s) {
          var d = delays[s.client] || (delays[s.client] = new Array(blocks.length).fill(null));
          if (d.length === blocks.length) { d[i] = s.delay_ms; }
        });
      });
    });
    return delays;
  }

  function clientRow(c, delays) {
    var quiet = now() - c.last_seen > QUIET_SECONDS;
    var behind = c.lag !== null && c.lag > LAG_LIMIT;
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
    tr.appendChild(el("td", "sync", syncState(node.syncing)));
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
      c.title = name + " since " + utc(since) +
        (typeof s.head === "number" ? ", at block " + number(s.head) : "") +
        (typeof s.best_head === "number" ? " of " + number(s.best_head) : "");
      td.appendChild(c);
    });
    return td;
  }

  // -- the pictures ------------------------------------------------------------------------

  function renderPropagation() {
    var blocks = propagationBlocks().filter(function (b) { return sightings[b.sha256]; })
      .map(function (b) {
        return { number: b.number, chain_id: b.chain_id, sightings: sightings[b.sha256].sightings };
      });
    Pictures.histogram($("propagation"), blocks);
  }

  function renderPictures() {
    renderPropagation();
    var times = $("block-times"), chains = $("chain-view");
    times.replaceChildren();
    chains.replaceChildren();
    if (!last.chains.length) {
      times.appendChild(el("div", "empty", "no blocks yet"));
      chains.appendChild(el("div", "empty", "no blocks yet"));
    }
    last.chains.forEach(function (chain) {
      var box = el("div", "chain-picture");
      box.dataset.chain = String(chain.chain_id);
      box.appendChild(el("div", "sub", "chain " + chain.chain_id + " · #" + number(chain.from + 1) +
                         " to #" + number(chain.to)));
      var picture = el("div");
      box.appendChild(picture);
      times.appendChild(box);
      Pictures.blockTimes(picture, chain);

      var seen = el("div", "chain-picture");
      seen.dataset.chain = String(chain.chain_id);
      seen.appendChild(el("div", "sub", "chain " + chain.chain_id + " · the last " + HEIGHTS +
                          " heights: canonical in a line, orphaned below; dashed: a gap"));
      var line = el("div", "scroll");
      seen.appendChild(line);
      chains.appendChild(seen);
      Pictures.chainView(line, chain, HEIGHTS, pick, picked && picked.sha256);
    });
    var panel = $("picked");
    panel.replaceChildren();
    if (picked) {
      panel.appendChild(el("div", "sub", "#" + number(picked.number) + " " + shortHash(picked.hash) +
                           (picked.canonical ? ", canonical" : ", orphaned") + ": who saw it when"));
      panel.appendChild(sightingsTable(picked));
    }
  }

  function pick(b) {
    if (picked && picked.sha256 === b.sha256) { picked = null; renderPictures(); return; }
    var asked = { sha256: b.sha256, number: b.number, hash: b.hash, canonical: b.canonical,
                  sightings: null, error: null };
    picked = asked;
    renderPictures();
    readBlock(asked, function () { if (picked === asked) { renderPictures(); } });
  }

  function readBlock(asked, done) {
    if (!/^[0-9a-f]{64}$/.test(asked.sha256)) { return; }
    get("/api/v1/blocks/" + asked.sha256).then(function (body) {
      asked.sightings = Array.isArray(body.sightings) ? body.sightings : [];
    }).catch(function (err) {
      asked.error = err.message;
    }).then(done);
  }

  // -- the changes of state and the recent blocks -----------------------------------------

  function renderEvents(answer) {
    var body = document.querySelector("#events tbody");
    body.replaceChildren();
    if (answer.error) { emptyRow(body, 4, answer.error); return; }
    answer.events.forEach(function (e) {
      var tr = el("tr", e.event === "entered" ? "entered" : "left");
      tr.dataset.eventId = String(e.id);
      var when = el("td", "num at", age(now() - e.at) + " ago");
      when.title = utc(e.at);
      tr.appendChild(when);
      tr.appendChild(el("td", "client", e.client));
      var change = el("td", "change");
      change.appendChild(chip(String(e.state), String(e.state)));
      change.appendChild(document.createTextNode(e.event === "entered" ? " entered" : " left"));
      tr.appendChild(change);
      tr.appendChild(el("td", "text", e.text));
      body.appendChild(tr);
    });
    if (!answer.events.length) { emptyRow(body, 4, "no change of state yet"); }
  }

  function renderBlocks(blocks) {
    var body = document.querySelector("#blocks tbody");
    body.replaceChildren();
    blocks.forEach(function (b) {
      var tr = el("tr");
      tr.dataset.sha256 = b.sha256;
      tr.appendChild(el("td", "num", number(b.number)));
      tr.appendChild(el("td", "", chainName(b.chain_id)));
      tr.appendChild(el("td", "mono", shortHash(b.hash)));
      tr.appendChild(el("td", "num", age(now() - b.first_seen) + " ago"));
      tr.appendChild(el("td", "", b.client));
      tr.appendChild(el("td", "mono", shortHash(b.sha256)));
      tr.tabIndex = 0;
      tr.title = "who saw it when";
      tr.addEventListener("click", function () { toggle(b.sha256); });
      tr.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(b.sha256); }
      });
      body.appendChild(tr);
      if (opened && opened.sha256 === b.sha256) {
        tr.className = "open";
        var row = el("tr", "sightings");
        row.dataset.sightingsOf = b.sha256;
        var td = el("td");
        td.colSpan = 6;
        td.appendChild(sightingsTable(opened));
        row.appendChild(td);
        body.appendChild(row);
      }
    });
    if (!blocks.length) { emptyRow(body, 6, "no blocks yet"); }
  }

  function toggle(sha256) {
    if (opened && opened.sha256 === sha256) { opened = null; renderBlocks(last.blocks); return; }
    var asked = { sha256: sha256, sightings: null, error: null };
    opened = asked;
    renderBlocks(last.blocks);
    readBlock(asked, function () { if (opened === asked && last) { renderBlocks(last.blocks); } });
  }

  function sightingsTable(block) {
    if (block.error) { return el("div", "empty", block.error); }
    if (block.sightings === null) { return el("div", "empty", "loading…"); }
    if (!block.sightings.length) { return el("div", "empty", "no sightings kept"); }
    var table = el("table", "seen");
    var head = el("tr");
    ["client", "seen at", "behind the first", "via"].forEach(function (t, i) {
      head.appendChild(el("th", i === 2 ? "num" : "", t));
    });
    table.appendChild(el("thead")).appendChild(head);
    var rows = table.appendChild(el("tbody"));
    block.sightings.forEach(function (s) {
      var row = el("tr");
      row.dataset.client = s.client;
      row.appendChild(el("td", "", s.client));
      row.appendChild(el("td", "mono", new Date(s.seen_at * 1000).toISOString().replace("T", " ").replace("Z", " UTC")));
      row.appendChild(el("td", "num delay", delay(s.delay_ms)));
      row.appendChild(el("td", "", s.via));
      rows.appendChild(row);
    });
    return table;
  }

  function renderArrivals(a) {
    var minutes = 60;
    var first = a.since;
    var counts = new Array(minutes).fill(0);
    a.counts.forEach(function (pair) {
      var i = Math.round((pair[0] - first) / a.bucket);
      if (i >= 0 && i < minutes) { counts[i] = pair[1]; }
    });
    var current = Math.floor((now() - first) / a.bucket);
    var chart = $("chart");
    chart.replaceChildren();
    var W = 960, H = 170, left = 36, bottom = 22, top = 10;
    var max = Math.max.apply(null, counts.concat([1]));
    var step = (W - left) / minutes;
    chart.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, "class": "axis" }));
    chart.appendChild(svg("text", { x: 0, y: top + 8 }, String(max)));
    chart.appendChild(svg("text", { x: 0, y: H - bottom }, "0"));
    counts.forEach(function (n, i) {
      if (!n) { return; }
      var h = (H - bottom - top) * n / max;
      var bar = svg("rect", { x: left + i * step + 1, y: H - bottom - h, width: Math.max(step - 2, 1),
                              height: h, "class": i === current ? "bar current" : "bar" });
      bar.appendChild(svg("title", {}, n + " at " + new Date((first + i * a.bucket) * 1000).toLocaleTimeString()));
      chart.appendChild(bar);
    });
    [[0, "60 min ago"], [30, "30 min ago"], [59, "now"]].forEach(function (t) {
      var x = left + t[0] * step + (t[0] === 59 ? step - 22 : 0);
      chart.appendChild(svg("text", { x: x, y: H - 6 }, t[1]));
    });
  }

  $("filter-name").addEventListener("input", function (e) {
    view.name = e.target.value;
    view.page = 0;
    renderFleet();
  });
  $("sort").addEventListener("change", function (e) { view.sort = e.target.value; renderFleet(); });
  $("prev").addEventListener("click", function () { view.page = Math.max(0, view.page - 1); renderFleet(); });
  $("next").addEventListener("click", function () { view.page += 1; renderFleet(); });
  $("legend").textContent = "A client turns red when the server has it in a state (behind," +
    " stalled, silent, syncing, fork), or when it is more than " + LAG_LIMIT +
    " blocks behind the best head of its chain or quiet for over " + QUIET_SECONDS +
    " s (change with ?lag=N&quiet=SECONDS). Updates every " + POLL_MS / 1000 + " s.";
  setInterval(function () {
    if (last) { renderFleet(); renderEvents(last.events); renderBlocks(last.blocks); }
  }, 1000);
  poll();
})();
