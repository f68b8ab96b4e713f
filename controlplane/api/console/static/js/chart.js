// Small time-series charts (uPlot, served from ../vendor) with gate thresholds drawn in.

import { html, useEffect, useRef } from "../vendor/htm-preact.module.js";

const PALETTE = ["#0b5cad", "#1a7f37", "#8250df", "#bc4c00", "#cf222e", "#116329"];
const POOL_COLORS = { blue: "#0b5cad", green: "#1a7f37" };

/** A stable color for a pool (or any series name). */
export function colorFor(name, index = 0) {
  return POOL_COLORS[name] || PALETTE[index % PALETTE.length];
}

function thresholdPlugin(thresholds) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { left, width, top, height } = u.bbox;
          ctx.save();
          for (const t of thresholds) {
            if (t.value === null || t.value === undefined) continue;
            const y = Math.round(u.valToPos(t.value, "y", true));
            if (y < top || y > top + height) continue;
            ctx.strokeStyle = "#cf222e";
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + width, y);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = "#a40e26";
            ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
            ctx.textAlign = "right";
            ctx.fillText(t.label, left + width - 4 * devicePixelRatio, y - 4 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

function options({ width, height, series, thresholds, format, stepped, xRange }) {
  const limit = Math.max(0, ...thresholds.map((t) => t.value ?? 0));
  return {
    width,
    height,
    legend: { show: true, live: true },
    cursor: { drag: { x: false, y: false } },
    scales: {
      // A shared span (the rollout's) keeps charts with one point from zooming out to years.
      x: { time: true, range: (_u, min, max) => xRange.current || [min, max] },
      y: {
        range: (_u, min, max) => {
          const top = Math.max(max ?? 0, limit * 1.15, format === "percent" ? 0.01 : 1);
          return [Math.min(0, min ?? 0), top];
        },
      },
    },
    axes: [
      { stroke: "#444" },
      {
        stroke: "#444",
        size: 60,
        values: (_u, ticks) => ticks.map((v) => (format === "percent" ? `${+(v * 100).toFixed(2)}%` : `${+v.toFixed(2)}`)),
      },
    ],
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || colorFor(s.label, i),
        width: 2,
        spanGaps: false,
        points: { show: stepped, size: 6 },
        paths: stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        value: (_u, v) => (v === null || v === undefined ? "–" : format === "percent" ? `${(v * 100).toFixed(2)}%` : v.toFixed(2)),
      })),
    ],
    plugins: [thresholdPlugin(thresholds)],
  };
}

/**
 * A time-series chart. `data` is [xs (epoch seconds), ys per series]; `thresholds` are drawn as
 * dashed red lines ({value, label}); `summary` is what a screen reader hears instead of the canvas;
 * `span` ([from, to], epoch seconds) fixes the time axis.
 */
export function Chart({ title, series, data, thresholds = [], format, height = 170, testid, summary, stepped = false, span = null }) {
  const box = useRef(null);
  const plot = useRef(null);
  const xRange = useRef(span);
  xRange.current = span;
  const shape = JSON.stringify([series.map((s) => s.label), thresholds, format, stepped]);

  useEffect(() => {
    if (!box.current || typeof uPlot === "undefined") return undefined;
    const width = Math.max(240, box.current.clientWidth);
    plot.current = new uPlot(options({ width, height, series, thresholds, format, stepped, xRange }), data, box.current);
    const resize = new ResizeObserver(() => {
      if (plot.current && box.current) plot.current.setSize({ width: Math.max(240, box.current.clientWidth), height });
    });
    resize.observe(box.current);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [shape, height]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return html`
    <figure class="chart" data-testid=${testid}>
      <figcaption>${title}</figcaption>
      <div ref=${box} role="img" aria-label=${`${title}: ${summary || "chart"}`}></div>
    </figure>
  `;
}
