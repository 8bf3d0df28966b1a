// The admin page's only script: refreshes the accounts table and the chart from the JSON
// endpoint, and moves a pending device login on once it is approved. No framework, no build.
(function () {
  "use strict";
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function when(epoch) {
    if (!epoch) { return "—"; }
    var date = new Date(epoch * 1000);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes());
  }

  function postForm(action, label, extra, className) {
    var inputs = [el("input", {type: "hidden", name: "csrf_token", value: csrf})];
    Object.keys(extra || {}).forEach(function (name) {
      inputs.push(el("input", {type: "hidden", name: name, value: extra[name]}));
    });
    inputs.push(el("button", className ? {type: "submit", "class": className} : {type: "submit"}, [label]));
    return el("form", {method: "post", action: action}, inputs);
  }

  function cell(label, main, notes) {
    var children = [main];
    (notes || []).forEach(function (note) { if (note) { children.push(el("small", {}, [note])); } });
    return el("td", {"data-label": label}, children);
  }

  function row(page, account) {
    var base = page.dataset.base + "accounts/" + encodeURIComponent(account.name);
    var toggle = account.state === "disabled" ? "enable" : "disable";
    var actions = el("td", {"class": "actions"}, [
      postForm(page.dataset.logins, "Re-login", {account: account.name}),
      postForm(base + "/" + toggle, toggle === "enable" ? "Enable" : "Disable"),
      el("a", {"class": "button danger", href: base + "/remove"}, ["Remove"])
    ]);
    return el("tr", {"data-account": account.name}, [
      cell("Account", el("strong", {}, [account.name]), [account.source]),
      cell("State", el("span", {"class": "state " + account.state}, [account.state]),
           [account.until ? "until " + when(account.until) : "", account.reason]),
      cell("Today", account.requests_today + " requests", [account.errors_today + " errors"]),
      cell("Tokens this month", account.input_tokens_month + " in", [account.output_tokens_month + " out"]),
      cell("Credits this month", Number(account.credits_month).toFixed(2)),
      cell("Token expires", when(account.token_expires_at)),
      cell("Last error", account.last_error || "—"),
      actions
    ]);
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    return node;
  }

  function drawChart(chart, activity) {
    // Narrow screens get a narrower drawing, so its labels stay readable when scaled down.
    var width = chart.clientWidth && chart.clientWidth < 500 ? 340 : 600;
    var height = 140, left = 30, bottom = 20, top = 8;
    chart.setAttribute("viewBox", "0 0 " + width + " " + height);
    var most = 1;
    activity.forEach(function (m) { most = Math.max(most, m[1], m[2]); });
    var step = (width - left - 4) / Math.max(1, activity.length - 1);
    var y = function (v) { return top + (height - top - bottom) * (1 - v / most); };
    while (chart.firstChild) { chart.removeChild(chart.firstChild); }
    [0, most].forEach(function (v) {
      chart.appendChild(svg("line", {x1: left, x2: width, y1: y(v), y2: y(v), "class": "grid"}));
      var label = svg("text", {x: left - 4, y: y(v) + 4, "class": "axis", "text-anchor": "end"});
      label.textContent = String(v);
      chart.appendChild(label);
    });
    [["-60 min", left, "start"], ["now", width, "end"]].forEach(function (t) {
      var label = svg("text", {x: t[1], y: height - 4, "class": "axis", "text-anchor": t[2]});
      label.textContent = t[0];
      chart.appendChild(label);
    });
    [[1, "requests"], [2, "errors"]].forEach(function (series) {
      var points = activity.map(function (m, i) {
        return (left + i * step).toFixed(1) + "," + y(m[series[0]]).toFixed(1);
      }).join(" ");
      chart.appendChild(svg("polyline", {points: points, "class": "line " + series[1],
                                         "data-series": series[1]}));
    });
  }

  function accountsPage(page) {
    var rows = document.getElementById("account-rows");
    var chart = document.getElementById("chart");
    var updated = document.getElementById("updated");
    var total = document.getElementById("activity-total");
    var last = null;
    window.addEventListener("resize", function () { if (last) { drawChart(chart, last); } });
    function refresh() {
      fetch(page.dataset.api, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); throw new Error("logged out"); }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (data) {
          while (rows.firstChild) { rows.removeChild(rows.firstChild); }
          data.accounts.forEach(function (account) { rows.appendChild(row(page, account)); });
          if (!data.accounts.length) {
            rows.appendChild(el("tr", {"class": "empty"}, [el("td", {colspan: "8"}, ["No account yet: add one below."])]));
          }
          last = data.activity;
          drawChart(chart, last);
          var sums = data.activity.reduce(function (s, m) { return [s[0] + m[1], s[1] + m[2]]; }, [0, 0]);
          total.textContent = "(" + sums[0] + " requests, " + sums[1] + " errors)";
          updated.textContent = "Updated " + new Date().toLocaleTimeString() + "; every " + page.dataset.refresh + " s.";
          updated.classList.remove("stale");
        })
        .catch(function (error) {
          updated.textContent = "Cannot update (" + error.message + "); trying again.";
          updated.classList.add("stale");
        });
    }
    refresh();
    window.setInterval(refresh, Number(page.dataset.refresh) * 1000);
  }

  function pendingPage(box) {
    var state = document.getElementById("login-state");
    var url = box.dataset.status + "?account=" + encodeURIComponent(box.dataset.account) +
      "&since=" + encodeURIComponent(box.dataset.since);
    var timer = window.setInterval(function () {
      if (Date.now() / 1000 > Number(box.dataset.expires)) {
        window.clearInterval(timer);
        state.textContent = "The code expired before the login was approved; start again.";
        state.classList.add("error");
        return;
      }
      fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then(function (response) { return response.json(); })
        .then(function (data) {
          if (data.state === "done") {
            window.clearInterval(timer);
            state.textContent = "Logged in. Back to the accounts…";
            window.location.assign(box.dataset.done);
          } else if (data.state === "failed") {
            window.clearInterval(timer);
            state.textContent = "The login failed: " + data.message;
            state.classList.add("error");
          }
        })
        .catch(function () { /* a missed poll: the next one tries again */ });
    }, 1500);
  }

  var page = document.getElementById("accounts-page");
  if (page) { accountsPage(page); }
  var pending = document.getElementById("pending");
  if (pending) { pendingPage(pending); }
}());
