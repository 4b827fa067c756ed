// The overview's charts, drawn with uPlot (vendored in /static/vendor/uplot, loaded by
// index.html as the global `uPlot`). Data comes from /v1/dashboard/series as columns.

const RATE_SERIES = [
  { key: "published", label: "published", stroke: "#2457c5" },
  { key: "succeeded", label: "succeeded", stroke: "#177245" },
  { key: "failed", label: "failed", stroke: "#b42318" },
];
const TIME_SERIES = [
  { key: "wait_p50", label: "wait p50", stroke: "#c98a00" },
  { key: "wait_p90", label: "wait p90", stroke: "#c98a00", dash: [6, 4] },
  { key: "wait_p99", label: "wait p99", stroke: "#c98a00", dash: [2, 3] },
  { key: "run_p50", label: "run p50", stroke: "#6d3fc0" },
  { key: "run_p90", label: "run p90", stroke: "#6d3fc0", dash: [6, 4] },
  { key: "run_p99", label: "run p99", stroke: "#6d3fc0", dash: [2, 3] },
];

const fmtMs = (v) => (v == null ? "—" : v < 1 ? `${v.toFixed(2)} ms` : v < 1000
  ? `${v.toPrecision(3)} ms` : `${(v / 1000).toPrecision(3)} s`);
const fmtRate = (v) => (v == null ? "—" : `${+v.toFixed(2)}/s`);

function decades(min, max) {
  const out = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    const v = 10 ** e;
    if (v >= min && v <= max) out.push(v);
  }
  return out;
}

function make(el, series, { log, value, axisValue }) {
  const width = () => Math.max(300, el.clientWidth || 600);
  const opts = {
    width: width(),
    height: 200,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: log
      ? { distr: 3, range: (u, min, max) => [Math.min(min ?? 0.1, 0.1), Math.max(max ?? 10, 10)] }
      : { range: (u, min, max) => [0, Math.max(1, max ?? 1)] } },
    axes: [{}, { size: 70, values: (u, splits) => splits.map(axisValue),
                 // a log axis: a line per power of ten, not per minor step
                 splits: log ? (u, i, min, max) => decades(min, max) : undefined }],
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.stroke, width: 1.5, dash: s.dash, spanGaps: log,
      points: { show: false }, value: (u, v) => value(v),
    }))],
  };
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, el);
  const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: 200 }));
  resize.observe(el);
  return { plot, stop: () => { resize.disconnect(); plot.destroy(); } };
}

// Two charts in `el`: tasks per second, and wait/run percentiles (ms, log scale).
export function charts(el) {
  const ratesBox = el.querySelector("#chart-rates");
  const timesBox = el.querySelector("#chart-times");
  const rates = make(ratesBox, RATE_SERIES, { log: false, value: fmtRate, axisValue: (v) => `${+v.toFixed(2)}` });
  const times = make(timesBox, TIME_SERIES, { log: true, value: fmtMs, axisValue: fmtMs });
  return {
    update(s) {
      rates.plot.setData([s.t, ...RATE_SERIES.map((x) => s[x.key])]);
      times.plot.setData([s.t, ...TIME_SERIES.map((x) => s[x.key].map((v) => (v == null ? null : v * 1000)))]);
      // what the tests (and curious users) can read without looking at pixels
      const sum = (k) => s[k].reduce((a, b) => a + b, 0);
      ratesBox.dataset.published = String(+(sum("published") * s.step).toFixed(0));
      ratesBox.dataset.succeeded = String(+(sum("succeeded") * s.step).toFixed(0));
      ratesBox.dataset.failed = String(+(sum("failed") * s.step).toFixed(0));
      timesBox.dataset.points = String(s.run_p50.filter((v) => v != null).length);
    },
    stop() { rates.stop(); times.stop(); },
  };
}
