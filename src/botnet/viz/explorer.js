// botnet attention explorer: decodes the page's quantised attention and draws the maps of the current query.
// Coordinates follow botnet.viz.maps: pixel (y, x) of the image lies in token (floor(y*H/H_img), floor(x*W/W_img)).
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const img = data.image;
  const COLUMNS = [
    { key: "probs", lut: "attention", image: true, caption: (v) => `max ${fmt(max(v))}` },
    { key: "content", lut: "logit", image: true, caption: (v) => `std ${fmt(std(v))}` },
    { key: "position", lut: "logit", image: true, caption: (v) => `std ${fmt(std(v))}` },
    { key: "offsetQuery", lut: "attention", image: false, caption: () => "centre = the query" },
    { key: "offsetMean", lut: "attention", image: false, caption: () => "centre = offset 0" },
  ];

  function bytes(b64) {
    const raw = atob(b64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  // Rows of `length` uint8 codes, each with a float32 (lo, hi): value = lo + code * (hi - lo) / 255.
  function dequantise(packed, length) {
    const codes = bytes(packed.codes);
    const range = new Float32Array(bytes(packed.range).buffer);
    const out = new Float32Array(codes.length);
    for (let row = 0; row < codes.length / length; row++) {
      const lo = range[2 * row];
      const step = (range[2 * row + 1] - lo) / 255;
      for (let i = row * length; i < (row + 1) * length; i++) out[i] = lo + codes[i] * step;
    }
    return out;
  }

  const luts = Object.fromEntries(Object.entries(data.colormaps).map(([name, b64]) => [name, bytes(b64)]));
  const decoded = new Map();

  function block(index) {
    if (!decoded.has(index)) {
      const b = data.blocks[index];
      const [H, W] = b.grid;
      const N = H * W;
      decoded.set(index, {
        name: b.name, H, W, N, heads: b.heads,
        probs: dequantise(b.probs, N), content: dequantise(b.content, N), position: dequantise(b.position, N),
        offsets: dequantise(b.offsets, (2 * H - 1) * (2 * W - 1)),
      });
    }
    return decoded.get(index);
  }

  const fmt = (v) => (Math.abs(v) >= 100 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : v.toFixed(3));
  const max = (v) => v.reduce((a, b) => Math.max(a, b), -Infinity);
  function std(v) {
    const mean = v.reduce((a, b) => a + b, 0) / v.length;
    return Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length);
  }

  // Map of one query over the keys (N values), for head k or the mean of heads ("mean").
  function queryMap(b, key, head, token) {
    const rowOf = (k) => b[key].subarray((k * b.N + token) * b.N, (k * b.N + token + 1) * b.N);
    if (head !== "mean") return rowOf(head);
    const out = new Float32Array(b.N);
    for (let k = 0; k < b.heads; k++) rowOf(k).forEach((v, i) => (out[i] += v / b.heads));
    return out;
  }

  // The query's attention by offset (key - query) on a (2H-1) x (2W-1) grid; offsets off the image are NaN.
  function offsetQuery(b, probs, [r, c]) {
    const w2 = 2 * b.W - 1;
    const out = new Float32Array((2 * b.H - 1) * w2).fill(NaN);
    for (let kr = 0; kr < b.H; kr++) {
      for (let kc = 0; kc < b.W; kc++) out[(kr - r + b.H - 1) * w2 + kc - c + b.W - 1] = probs[kr * b.W + kc];
    }
    return out;
  }

  function offsetMean(b, head) {
    const size = (2 * b.H - 1) * (2 * b.W - 1);
    if (head !== "mean") return b.offsets.subarray(head * size, (head + 1) * size);
    const out = new Float32Array(size);
    for (let k = 0; k < b.heads; k++) {
      b.offsets.subarray(k * size, (k + 1) * size).forEach((v, i) => (out[i] += v / b.heads));
    }
    return out;
  }

  // Draw values (row-major, width x height) at one canvas pixel per token, coloured over their own [min, max].
  function paint(canvas, values, width, height, lut) {
    canvas.width = width;
    canvas.height = height;
    const finite = values.filter(Number.isFinite);
    const lo = Math.min(...finite);
    const span = Math.max(...finite) - lo;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(width, height);
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const c = span > 0 ? Math.round(((v - lo) / span) * 255) : 0;
      pixels.data.set([lut[3 * c], lut[3 * c + 1], lut[3 * c + 2], 255], 4 * i);
    });
    ctx.putImageData(pixels, 0, 0);
  }

  const state = { block: 0, head: "mean", pixel: [Math.floor(img.height / 2), Math.floor(img.width / 2)], pinned: false };
  const $ = (id) => document.getElementById(id);
  const tokenOf = (b, [y, x]) => [Math.floor((y * b.H) / img.height), Math.floor((x * b.W) / img.width)];
  const centreOf = (b, [r, c]) => [
    Math.floor(((2 * r + 1) * img.height) / (2 * b.H)),
    Math.floor(((2 * c + 1) * img.width) / (2 * b.W)),
  ];
  const headLabel = (head) => (head === "mean" ? "mean of heads" : `head ${head}`);

  // A panel: for an image map, the image, the map canvas over it and the query marker; for an offset map, the
  // canvas and a marker at offset 0.
  function panel(kind, b, div = document.createElement("div")) {
    div.classList.add("panel", kind);
    if (kind === "image") {
      div.style.aspectRatio = `${img.width} / ${img.height}`;
      const image = document.createElement("img");
      image.src = img.src;
      image.alt = "";
      div.append(image);
      attachPointer(div);
    } else {
      div.style.aspectRatio = `${2 * b.W - 1} / ${2 * b.H - 1}`;
    }
    const marker = document.createElement("div");
    marker.className = "marker";
    div.append(document.createElement("canvas"), marker);
    return div;
  }

  function attachPointer(div) {
    const pixelAt = (event) => {
      const rect = div.getBoundingClientRect();
      const clamp = (v, n) => Math.min(n - 1, Math.max(0, Math.floor(v * n)));
      return [clamp((event.clientY - rect.top) / rect.height, img.height), clamp((event.clientX - rect.left) / rect.width, img.width)];
    };
    div.addEventListener("pointermove", (event) => {
      if (!state.pinned) setQuery(pixelAt(event), false);
    });
    div.addEventListener("click", (event) => {
      const b = block(state.block);
      const pixel = pixelAt(event);
      const same = tokenOf(b, pixel).join() === tokenOf(b, state.pixel).join();
      setQuery(pixel, !(state.pinned && same));
    });
  }

  function setQuery(pixel, pinned) {
    state.pixel = pixel;
    state.pinned = pinned;
    render();
  }

  function buildBlock() {
    const b = block(state.block);
    const head = $("head");
    head.replaceChildren(...["mean", ...Array.from({ length: b.heads }, (_, k) => k)].map((h) => new Option(headLabel(h), h)));
    if (state.head !== "mean" && state.head >= b.heads) state.head = "mean";
    head.value = String(state.head);
    const rows = ["mean", ...Array.from({ length: b.heads }, (_, k) => k)].map((h) => {
      const tr = document.createElement("tr");
      tr.dataset.row = String(h);
      const th = document.createElement("th");
      th.scope = "row";
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = headLabel(h);
      button.addEventListener("click", () => selectHead(h));
      th.append(button);
      tr.append(th);
      for (const col of COLUMNS) {
        const td = document.createElement("td");
        const p = panel(col.image ? "image" : "offset", b);
        p.dataset.col = col.key;
        const cap = document.createElement("span");
        cap.className = "cap";
        td.append(p, cap);
        tr.append(td);
      }
      return tr;
    });
    document.querySelector("#heads tbody").replaceChildren(...rows);
    render();
  }

  function selectHead(h) {
    state.head = h;
    $("head").value = String(h);
    render();
  }

  function render() {
    const b = block(state.block);
    const token = tokenOf(b, state.pixel);
    const t = token[0] * b.W + token[1];
    const imageMarker = `left: ${(100 * (state.pixel[1] + 0.5)) / img.width}%; top: ${(100 * (state.pixel[0] + 0.5)) / img.height}%`;
    const offsetMarker = "left: 50%; top: 50%";
    for (const tr of document.querySelectorAll("#heads tbody tr")) {
      const head = tr.dataset.row === "mean" ? "mean" : Number(tr.dataset.row);
      tr.classList.toggle("selected", head === state.head);
      tr.querySelector("button").setAttribute("aria-pressed", String(head === state.head));
      const maps = {};
      maps.probs = queryMap(b, "probs", head, t);
      maps.content = queryMap(b, "content", head, t);
      maps.position = queryMap(b, "position", head, t);
      maps.offsetQuery = offsetQuery(b, maps.probs, token);
      maps.offsetMean = offsetMean(b, head);
      COLUMNS.forEach((col, i) => {
        const td = tr.children[i + 1];
        const [h, w] = col.image ? [b.H, b.W] : [2 * b.H - 1, 2 * b.W - 1];
        paint(td.querySelector("canvas"), maps[col.key], w, h, luts[col.lut]);
        td.querySelector(".marker").style.cssText = col.image ? imageMarker : offsetMarker;
        td.querySelector(".cap").textContent = col.caption(maps[col.key]);
      });
    }
    const view = $("view");
    paint(view.querySelector("canvas"), queryMap(b, "probs", state.head, t), b.W, b.H, luts.attention);
    view.querySelector(".marker").style.cssText = imageMarker;
    document.body.classList.toggle("pinned", state.pinned);
    $("status").textContent =
      `${b.name}, ${headLabel(state.head)}: query pixel (y, x) = (${state.pixel.join(", ")}) in token ` +
      `(${token.join(", ")}) of ${b.H}×${b.W}` + (state.pinned ? " · pinned (click it or press Enter to release)" : "");
  }

  function onKey(event) {
    const b = block(state.block);
    const [r, c] = tokenOf(b, state.pixel);
    const step = event.shiftKey ? 3 : 1;
    const moves = { ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step] };
    if (event.key in moves) {
      const [dr, dc] = moves[event.key];
      const to = [Math.min(b.H - 1, Math.max(0, r + dr)), Math.min(b.W - 1, Math.max(0, c + dc))];
      setQuery(centreOf(b, to), true);
    } else if (event.key === "Home") {
      setQuery([Math.floor(img.height / 2), Math.floor(img.width / 2)], true);
    } else if (event.key === "Enter" || event.key === " ") {
      setQuery(state.pixel, !state.pinned);
    } else {
      return;
    }
    event.preventDefault();
  }

  function setup() {
    document.title = `${document.title} · ${data.blocks.length} blocks`;
    // Offset panels are as tall as the image panels of their row.
    document.body.style.setProperty("--row-height", `calc(var(--cell-width) * ${Math.min(1, img.height / img.width)})`);
    const view = panel("image", null, $("view"));
    view.addEventListener("keydown", onKey);

    const select = $("block");
    select.replaceChildren(...data.blocks.map((b, i) => new Option(`${b.name} (${b.grid[0]}×${b.grid[1]} tokens, ${b.heads} heads)`, i)));
    select.addEventListener("change", () => {
      state.block = Number(select.value);
      buildBlock();
    });
    $("head").addEventListener("change", (event) => selectHead(event.target.value === "mean" ? "mean" : Number(event.target.value)));
    $("alpha").addEventListener("input", (event) => document.body.style.setProperty("--alpha", event.target.value / 100));
    $("smooth").addEventListener("change", (event) => document.body.classList.toggle("pixelated", !event.target.checked));

    const list = $("top5");
    if (!data.predictions.length) list.textContent = "The model's output is not a classifier's.";
    for (const [label, p] of data.predictions) {
      const li = document.createElement("li");
      li.innerHTML = '<span class="label"></span><span class="p"></span><span class="bar"><span></span></span>';
      li.querySelector(".label").textContent = label;
      li.querySelector(".p").textContent = `${(100 * p).toFixed(1)}%`;
      li.querySelector(".bar span").style.width = `${100 * p}%`;
      list.append(li);
    }
    // A small image (e.g. a 28 px digit) is shown with sharp pixels.
    document.body.classList.toggle("small-image", Math.max(img.width, img.height) < 160);
    buildBlock();
  }

  // For tests and the console: the current query and selection.
  window.botnetExplorer = {
    state: () => {
      const b = block(state.block);
      return { block: b.name, head: state.head, pixel: [...state.pixel], token: tokenOf(b, state.pixel), pinned: state.pinned };
    },
  };
  setup();
})();
