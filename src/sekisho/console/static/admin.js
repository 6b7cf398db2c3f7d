// The admin console's only script (served by Sekisho; the CSP allows no inline script).
// It draws the dashboard charts from the page's JSON data block with uPlot (when the
// vendored library is present; the same figures are always in tables), and asks before
// destructive forms are submitted. Everything works without it.
(function () {
  "use strict";

  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  }

  function seconds(value) {
    var time = Date.parse(value);
    return isNaN(time) ? null : time / 1000;
  }

  // Rows ({start|day, signins, signin_failures, denials}) -> uPlot's column arrays.
  function columns(rows) {
    var xs = [], ok = [], failed = [], denied = [];
    rows.forEach(function (row) {
      var x = seconds(row.start || row.day);
      if (x === null) { return; }
      xs.push(x);
      ok.push(row.signins || 0);
      failed.push(row.signin_failures || 0);
      denied.push(row.denials || 0);
    });
    return [xs, ok, failed, denied];
  }

  function rowsOf(data, keys) {
    for (var i = 0; i < keys.length; i++) {
      var value = data[keys[i]];
      if (Array.isArray(value)) { return value; }
      if (value && Array.isArray(value.buckets)) { return value.buckets; }
    }
    return [];
  }

  function draw(element, payload, kind) {
    var data = payload.data || {};
    var labels = payload.labels || {};
    var rows = kind === "hourly" ? rowsOf(data, ["hourly", "per_hour"])
      : rowsOf(data, ["daily", "per_day"]);
    var plotted = columns(rows);
    if (!plotted[0].length) { return; }
    var zone = data.timezone || "Asia/Tokyo";
    var locale = payload.lang === "ja" ? "ja-JP" : "en-GB";
    var when = kind === "hourly"
      ? { timeZone: zone, hour: "2-digit", minute: "2-digit" }
      : { timeZone: zone, month: "numeric", day: "numeric" };
    var format = function (value) {
      return value == null ? "--" : new Date(value * 1e3).toLocaleString(locale, when);
    };
    var width = Math.max(320, element.clientWidth - 16);
    var options = {
      width: width,
      height: 220,
      series: [
        { label: kind === "hourly" ? labels.hour : labels.day,
          value: function (u, value) { return format(value); } },
        { label: labels.signins || "sign-ins", stroke: "#1d4e89", width: 2 },
        { label: labels.signin_failures || "failed", stroke: "#6b4100", width: 2, dash: [6, 4] },
        { label: labels.denials || "denials", stroke: "#a61b1b", width: 2, dash: [2, 3] }
      ],
      axes: [
        { values: function (u, splits) { return splits.map(format); } },
        { size: 48 }
      ],
      scales: { y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } }
    };
    // eslint-disable-next-line no-new
    new window.uPlot(options, plotted, element);
  }

  function charts() {
    var block = document.getElementById("dashboard-data");
    if (!block || typeof window.uPlot !== "function") { return; }
    var payload;
    try {
      payload = JSON.parse(block.textContent);
    } catch (error) {
      return;
    }
    document.querySelectorAll("[data-chart]").forEach(function (element) {
      draw(element, payload, element.getAttribute("data-chart"));
      element.setAttribute("data-drawn", "true");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmations();
    charts();
  });
}());
