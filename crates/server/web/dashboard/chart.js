// A minimal time-series chart drawn as SVG: a fixed window of samples, one polyline and its
// area, three horizontal grid lines labelled with the scale. Used by the dashboard and the
// system-stats demo; no library, nothing loaded from elsewhere.

const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 100;

function el(name, attrs) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** A round upper bound for the scale (1, 2, 5 × 10ⁿ), so labels stay readable. */
function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

export class LineChart {
  /** @param {HTMLElement} container @param {number} capacity samples kept (one per tick) */
  constructor(container, capacity, format = (v) => String(v)) {
    this.capacity = capacity;
    this.format = format;
    this.values = [];
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    this.grid = [0.25, 0.5, 0.75].map((f) => {
      const y = H * f;
      this.svg.append(el("line", { class: "grid", x1: 0, x2: W, y1: y, y2: y }));
      const label = el("text", { x: 2, y: y - 2 });
      this.svg.append(label);
      return { f, label };
    });
    this.area = el("path", { class: "area" });
    this.line = el("polyline", { class: "line" });
    this.svg.append(this.area, this.line);
    container.replaceChildren(this.svg);
  }

  push(value) {
    this.values.push(value);
    if (this.values.length > this.capacity) this.values.shift();
    this.draw();
  }

  draw() {
    const max = niceMax(Math.max(...this.values));
    const step = W / (this.capacity - 1);
    const offset = this.capacity - this.values.length;
    const points = this.values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(H - (v / max) * H).toFixed(1)}`);
    this.line.setAttribute("points", points.join(" "));
    if (points.length) {
      const first = (offset * step).toFixed(1);
      this.area.setAttribute("d", `M${first},${H} L${points.join(" L")} L${W},${H} Z`);
    }
    for (const { f, label } of this.grid) label.textContent = this.format(max * (1 - f));
    this.svg.setAttribute("aria-label", `latest ${this.format(this.values.at(-1) ?? 0)}`);
  }
}
