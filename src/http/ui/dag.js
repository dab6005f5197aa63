// The DAG of a pipeline or run as hand-written SVG: layered layout (each stage in the layer of its
// longest path from a root, stages of a layer in plan order), edges as curves, pan by dragging, zoom with
// the wheel or the buttons. Redrawing phases only touches the nodes' attributes, never the layout.

const NODE_W = 168;
const NODE_H = 34;
const GAP_X = 56;
const GAP_Y = 14;
const PAD = 16;

const SVG_NS = 'http://www.w3.org/2000/svg';

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// stages: [{id, dependsOn: [ids]}] in plan order. Returns {nodes: Map id -> {x, y, layer}, width,
// height, edges: [[from, to]]}.
export function layout(stages) {
  const ids = new Set(stages.map((s) => s.id));
  const deps = new Map(stages.map((s) => [s.id, (s.dependsOn || []).filter((d) => ids.has(d))]));
  const layer = new Map();
  const visiting = new Set();
  // Longest path from a root, iteratively (a 200-stage chain must not overflow the stack).
  const layerOf = (start) => {
    const stack = [[start, false]];
    while (stack.length) {
      const [id, done] = stack.pop();
      if (layer.has(id)) continue;
      if (done) {
        visiting.delete(id);
        let l = 0;
        for (const d of deps.get(id)) l = Math.max(l, (layer.get(d) ?? -1) + 1);
        layer.set(id, l);
        continue;
      }
      if (visiting.has(id)) continue; // a cycle: validation refuses those; draw what is there
      visiting.add(id);
      stack.push([id, true]);
      for (const d of deps.get(id)) if (!layer.has(d)) stack.push([d, false]);
    }
  };
  for (const s of stages) layerOf(s.id);
  const layers = [];
  for (const s of stages) {
    const l = layer.get(s.id);
    (layers[l] ||= []).push(s.id);
  }
  const nodes = new Map();
  let rows = 0;
  layers.forEach((members, l) => {
    rows = Math.max(rows, members.length);
    members.forEach((id, i) => nodes.set(id, { x: PAD + l * (NODE_W + GAP_X), y: PAD + i * (NODE_H + GAP_Y), layer: l }));
  });
  const edges = [];
  for (const s of stages) for (const d of deps.get(s.id)) edges.push([d, s.id]);
  return {
    nodes,
    edges,
    width: PAD * 2 + Math.max(1, layers.length) * (NODE_W + GAP_X) - GAP_X,
    height: PAD * 2 + Math.max(1, rows) * (NODE_H + GAP_Y) - GAP_Y,
  };
}

// Draws `stages` into `container`; returns {setPhases(map id -> phase), select(id), elapsedMs}.
// onSelect(id) is called when a stage is clicked.
export function renderDag(container, stages, onSelect) {
  const started = performance.now();
  const g = layout(stages);
  const parts = [];
  for (const [from, to] of g.edges) {
    const a = g.nodes.get(from);
    const b = g.nodes.get(to);
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    parts.push(`<path class="edge" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}"/>`);
  }
  for (const s of stages) {
    const n = g.nodes.get(s.id);
    const label = s.id.length > 22 ? `${s.id.slice(0, 21)}…` : s.id;
    parts.push(
      `<g class="node" data-stage="${esc(s.id)}" data-phase="Pending" transform="translate(${n.x},${n.y})">` +
        `<title>${esc(s.id)}${s.component ? ` (${esc(s.component)})` : ''}</title>` +
        `<rect width="${NODE_W}" height="${NODE_H}" rx="6"/>` +
        `<text x="10" y="${NODE_H / 2 + 4}">${esc(label)}</text></g>`,
    );
  }
  container.innerHTML =
    `<div class="dag-tools"><button type="button" data-zoom="in" title="Zoom in">+</button>` +
    `<button type="button" data-zoom="out" title="Zoom out">−</button>` +
    `<button type="button" data-zoom="fit" title="Fit to view">fit</button></div>` +
    `<svg class="dag-svg" xmlns="${SVG_NS}" role="img" aria-label="stage graph"><g class="viewport">${parts.join('')}</g></svg>`;
  const svg = container.querySelector('svg');
  const viewport = svg.querySelector('.viewport');
  const byId = new Map();
  for (const node of viewport.querySelectorAll('.node')) byId.set(node.dataset.stage, node);

  const view = { x: 0, y: 0, k: 1 };
  const apply = () => viewport.setAttribute('transform', `translate(${view.x},${view.y}) scale(${view.k})`);
  const fit = () => {
    const w = svg.clientWidth || 800;
    const h = svg.clientHeight || 360;
    view.k = Math.min(1.25, w / g.width, h / g.height);
    // Too many stages to fit readably: start at a readable zoom at the top left; pan and zoom from there.
    if (view.k < 0.45) view.k = 0.45;
    view.x = Math.max(0, (w - g.width * view.k) / 2);
    view.y = Math.max(0, (h - g.height * view.k) / 2);
    apply();
  };
  const zoom = (factor, cx, cy) => {
    const k = Math.min(4, Math.max(0.1, view.k * factor));
    view.x = cx - ((cx - view.x) * k) / view.k;
    view.y = cy - ((cy - view.y) * k) / view.k;
    view.k = k;
    apply();
  };
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  let drag = null;
  svg.addEventListener('pointerdown', (e) => {
    if (e.target.closest('.node')) return;
    drag = { x: e.clientX - view.x, y: e.clientY - view.y };
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener('pointermove', (e) => {
    if (!drag) return;
    view.x = e.clientX - drag.x;
    view.y = e.clientY - drag.y;
    apply();
  });
  svg.addEventListener('pointerup', () => { drag = null; });
  container.querySelector('.dag-tools').addEventListener('click', (e) => {
    const which = e.target.dataset.zoom;
    const cx = (svg.clientWidth || 800) / 2;
    const cy = (svg.clientHeight || 360) / 2;
    if (which === 'in') zoom(1.25, cx, cy);
    else if (which === 'out') zoom(1 / 1.25, cx, cy);
    else if (which === 'fit') fit();
  });
  viewport.addEventListener('click', (e) => {
    const node = e.target.closest('.node');
    if (node && onSelect) onSelect(node.dataset.stage);
  });
  // A small graph gets a low box instead of empty space; a large one the full height to pan in.
  const widthScale = Math.max(0.45, Math.min(1.25, (svg.clientWidth || 800) / g.width));
  container.style.height = `${Math.round(Math.min(380, Math.max(150, g.height * widthScale + 56)))}px`;
  fit();
  const elapsedMs = performance.now() - started;
  svg.dataset.renderMs = elapsedMs.toFixed(1);
  return {
    elapsedMs,
    setPhases(phases) {
      for (const [id, phase] of phases) {
        const node = byId.get(id);
        if (node && node.dataset.phase !== phase) node.dataset.phase = phase;
      }
    },
    select(id) {
      for (const [sid, node] of byId) node.classList.toggle('selected', sid === id);
    },
  };
}
