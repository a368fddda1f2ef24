/* slideaudit deep-zoom viewer: two synced OpenSeadragon viewers over one slide, map layers on top,
   each pane's numbered markers, the lesion polygons as SVG, and the view carried to the next slide
   in the URL's hash (x, y: level-0 px at the centre; zoom: screen px per level-0 px; the layers). */
(function () {
  "use strict";
  const app = document.getElementById("viewer-app");
  const config = JSON.parse(app.dataset.config);
  const slide = config.slide;
  const SIDES = ["left", "right"];
  const opacity = document.getElementById("opacity");
  const display = document.getElementById("display");
  const showMarkers = document.getElementById("show-markers");
  const tip = document.getElementById("marker-tip");
  const SVG = "http://www.w3.org/2000/svg";
  /* items[side][key]: the tiled images; key = map name (raw lattice), name + "~smooth", or a mask name */
  const state = {config: config, viewers: {}, items: {left: {}, right: {}}, expected: 0, lesions: [], syncing: false};
  state.expected = 2 * config.heat.length + config.masks.length;

  function source(url, format) {
    return {Image: {xmlns: "http://schemas.microsoft.com/deepzoom/2008", Url: url, Format: format,
      Overlap: String(slide.overlap), TileSize: String(slide.tileSize),
      Size: {Width: String(slide.width), Height: String(slide.height)}}};
  }

  function chosen(side) {
    return document.querySelector(".heat-layer[data-side=" + side + "]").value;
  }

  function labelOn(name) {
    const box = document.querySelector(".label-layer[value=" + name + "]");
    return Boolean(box && box.checked);
  }

  /* Each side's chosen map in the chosen display at the slider's opacity; the ticked masks fully. */
  function refresh() {
    const suffix = display.value === "smooth" ? "~smooth" : "";
    SIDES.forEach(function (side) {
      const heat = chosen(side);
      Object.entries(state.items[side]).forEach(function ([key, item]) {
        const on = config.masks.includes(key) ? labelOn(key) : key === heat + suffix;
        item.setOpacity(on ? (config.masks.includes(key) ? 1 : opacity.value / 100) : 0);
      });
      legend(side, heat);
      placeMarkers(side);
      const svg = state.viewers[side] && state.viewers[side].lesionSvg;
      if (svg) { svg.style.display = labelOn(config.outline) ? "" : "none"; }
    });
    remember();
  }

  function legend(side, heat) {
    const box = document.getElementById("legend-" + side);
    const ticks = box.querySelector(".ticks");
    box.style.display = heat ? "" : "none";
    ticks.replaceChildren.apply(ticks, (config.legend[heat] || []).map(function (t) {
      const tick = document.createElement("span");
      tick.textContent = t.percent + " %: " + Number(t.value.toPrecision(3));
      return tick;
    }));
  }

  /* A bar of a round length (1, 2 or 5 x 10^k µm) about 120 screen px long. */
  function scalebar(side) {
    const viewer = state.viewers[side], item = viewer.world.getItemAt(0);
    if (!item) { return; }
    const a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
    const umPerPx = 1000 * slide.mpp / (b.x - a.x);
    const target = 120 * umPerPx, power = Math.pow(10, Math.floor(Math.log10(target)));
    const um = [5, 2, 1].map(function (m) { return m * power; }).find(function (v) { return v <= target; });
    const bar = document.getElementById("scalebar-" + side);
    bar.querySelector("span").style.width = (um / umPerPx).toFixed(1) + "px";
    bar.querySelector("b").textContent = um >= 1000 ? um / 1000 + " mm" : Number(um.toPrecision(3)) + " µm";
  }

  function sync(from) {
    if (state.syncing) { return; }
    state.syncing = true;
    const from_ = state.viewers[from].viewport;
    Object.entries(state.viewers).forEach(function ([side, viewer]) {
      if (side !== from) {
        viewer.viewport.zoomTo(from_.getZoom(), null, true);
        viewer.viewport.panTo(from_.getCenter(), true);
      }
    });
    state.syncing = false;
  }

  /* Fit both viewers to the level-0 box (x, y, w, h) grown by `margin` times its size on each side. */
  function flyTo(x, y, w, h, margin) {
    const viewer = state.viewers.left, item = viewer.world.getItemAt(0);
    const box = item.imageToViewportRectangle(x - margin * w, y - margin * h, (1 + 2 * margin) * w, (1 + 2 * margin) * h);
    viewer.viewport.fitBounds(box, true);
    viewer.viewport.applyConstraints(true);
  }

  /* The tooltip of a marker, beside it, on hover and on keyboard focus; Escape hides it. */
  function showTip(el, m) {
    tip.replaceChildren.apply(tip, m.tip.map(function (line) {
      const row = document.createElement("span");
      row.textContent = line;
      return row;
    }));
    tip.hidden = false;
    const r = el.getBoundingClientRect();
    tip.style.left = Math.min(r.right + 8, window.innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = Math.max(r.top - 4, 4) + "px";
  }

  function hideTip() { tip.hidden = true; }

  function markerElement(m) {
    const el = document.createElement("button");
    el.type = "button";
    el.className = "marker " + m.kind;
    el.textContent = String(m.rank);
    el.setAttribute("aria-label", m.tip.join(", "));
    el.setAttribute("aria-describedby", "marker-tip");
    el.addEventListener("mouseenter", function () { showTip(el, m); });
    el.addEventListener("focus", function () { showTip(el, m); });
    el.addEventListener("mouseleave", hideTip);
    el.addEventListener("blur", hideTip);
    el.addEventListener("keydown", function (e) { if (e.key === "Escape") { hideTip(); } });
    return el;
  }

  /* The pane shows only its own map's markers, numbered by rank: a peak's badge on its centre, a
     top patch's on its patch's top-left corner (so the two never hide each other when zoomed in);
     peaks are added last, so they lie on top. */
  function placeMarkers(side) {
    const viewer = state.viewers[side];
    if (!viewer || !viewer.world.getItemAt(0)) { return; }
    viewer.clearOverlays();
    if (!showMarkers.checked) { return; }
    const item = viewer.world.getItemAt(0), heat = chosen(side);
    const mine = config.markers.filter(function (m) { return m.layers.includes(heat); });
    mine.sort(function (a, b) { return (a.kind === "peak") - (b.kind === "peak"); }).forEach(function (m) {
      const peak = m.kind === "peak";
      viewer.addOverlay({element: markerElement(m), checkResize: false,
        placement: peak ? OpenSeadragon.Placement.CENTER : OpenSeadragon.Placement.TOP_LEFT,
        location: item.imageToViewportCoordinates(peak ? m.x + m.w / 2 : m.x, peak ? m.y + m.h / 2 : m.y)});
    });
  }

  /* The lesion polygons as one SVG path per ring (even-odd fill rule keeps the holes), in level-0
     px under a transform that follows the viewport; strokes keep their screen width. */
  function lesionSvg(viewer) {
    const svg = document.createElementNS(SVG, "svg"), g = document.createElementNS(SVG, "g");
    svg.setAttribute("class", "lesions");
    svg.setAttribute("aria-hidden", "true");
    const d = state.lesions.map(function (f) {
      return f.geometry.coordinates.map(function (ring) {
        return "M" + ring.map(function (p) { return p[0] + " " + p[1]; }).join("L") + "Z";
      }).join("");
    }).join("");
    ["under", "over"].forEach(function (cls) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("class", cls);
      path.setAttribute("d", d);
      g.appendChild(path);
    });
    svg.appendChild(g);
    viewer.canvas.insertBefore(svg, viewer.overlaysContainer || null);
    viewer.lesionSvg = svg;
    const follow = function () {
      const item = viewer.world.getItemAt(0);
      if (!item) { return; }
      const a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
      const b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(slide.width, 0));
      g.setAttribute("transform", "translate(" + a.x + " " + a.y + ") scale(" + (b.x - a.x) / slide.width + ")");
    };
    viewer.addHandler("update-viewport", follow);
    follow();
  }

  function lesionBounds() {
    const xs = [], ys = [];
    state.lesions.forEach(function (f) {
      f.geometry.coordinates[0].forEach(function (p) { xs.push(p[0]); ys.push(p[1]); });
    });
    const x0 = Math.min.apply(null, xs), y0 = Math.min.apply(null, ys);
    return {x: x0, y: y0, w: Math.max.apply(null, xs) - x0, h: Math.max.apply(null, ys) - y0};
  }

  /* The view and the layers as the URL's hash, so the next slide opens the same way. */
  function viewState() {
    const viewer = state.viewers.left, item = viewer && viewer.world.getItemAt(0);
    const params = new URLSearchParams({left: chosen("left"), right: chosen("right"), display: display.value,
      opacity: opacity.value, labels: Array.from(document.querySelectorAll(".label-layer:checked")).map(function (b) { return b.value; }).join(","),
      markers: showMarkers.checked ? "1" : "0"});
    if (item) {
      const c = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
      params.set("x", c.x.toFixed(0));
      params.set("y", c.y.toFixed(0));
      params.set("zoom", item.viewportToImageZoom(viewer.viewport.getZoom(true)).toPrecision(4));
    }
    return params.toString();
  }

  function remember() {
    history.replaceState(null, "", "#" + viewState());
  }

  function restoreControls(params) {
    SIDES.forEach(function (side) {
      const select = document.querySelector(".heat-layer[data-side=" + side + "]");
      const wanted = params.get(side);
      select.value = wanted !== null && config.heat.concat([""]).includes(wanted) ? wanted : config[side];
    });
    if (params.get("display") === "smooth") { display.value = "smooth"; }
    if (params.get("opacity") !== null) { opacity.value = params.get("opacity"); }
    if (params.get("labels") !== null) {
      const on = params.get("labels").split(",");
      document.querySelectorAll(".label-layer").forEach(function (b) { b.checked = on.includes(b.value); });
    }
    showMarkers.checked = params.get("markers") !== "0";
  }

  function restoreView(params) {
    const viewer = state.viewers.left, item = viewer.world.getItemAt(0);
    const x = Number(params.get("x")), y = Number(params.get("y")), zoom = Number(params.get("zoom"));
    if (!params.has("zoom") || !(zoom > 0) || !isFinite(x) || !isFinite(y)) { return; }
    viewer.viewport.zoomTo(item.imageToViewportZoom(zoom), null, true);
    viewer.viewport.panTo(item.imageToViewportCoordinates(x, y), true);
    viewer.viewport.applyConstraints(true);
  }

  function open(side, params) {
    const viewer = OpenSeadragon({id: "osd-" + side, prefixUrl: config.static + "openseadragon/images/",
      tileSources: source(slide.url, "jpeg"), drawer: "canvas", showNavigator: side === "left",
      maxZoomPixelRatio: 2, visibilityRatio: 0.5});
    state.viewers[side] = viewer;
    viewer.addOnceHandler("open", function () {
      const add = function (key, url) {
        viewer.addTiledImage({tileSource: source(url, "png"), opacity: 0,
          success: function (e) { state.items[side][key] = e.item; refresh(); }});
      };
      config.heat.forEach(function (name) {
        add(name, "layers/" + name + "_files/");
        add(name + "~smooth", "smooth/" + name + "_files/");
      });
      config.masks.forEach(function (name) { add(name, "layers/" + name + "_files/"); });
      if (side === "left") { restoreView(params); }
      scalebar(side);
      placeMarkers(side);
      if (state.lesions.length && !viewer.lesionSvg) { lesionSvg(viewer); refresh(); }
    });
    viewer.addHandler("viewport-change", function () { sync(side); });
    viewer.addHandler("animation", function () { scalebar(side); });
    viewer.addHandler("animation-finish", remember);
  }

  function go(url) {
    location.href = url + "#" + viewState();
  }

  const params = new URLSearchParams(location.hash.slice(1));
  restoreControls(params);
  SIDES.forEach(function (side) { open(side, params); });

  const markers = document.getElementById("markers");
  config.markers.forEach(function (m, i) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = m.label;
    markers.appendChild(option);
  });
  markers.addEventListener("change", function () {
    if (markers.value === "") { return; }
    const m = config.markers[Number(markers.value)], left = document.querySelector(".heat-layer[data-side=left]");
    if (!m.layers.includes(left.value)) { left.value = m.layers[0]; refresh(); }
    flyTo(m.x, m.y, m.w, m.h, 1);
  });

  const fly = document.getElementById("fly-lesion");
  fetch(config.lesions).then(function (r) { return r.ok ? r.json() : {features: []}; }).then(function (doc) {
    state.lesions = doc.features || [];
    fly.disabled = state.lesions.length === 0;
    fly.title = state.lesions.length ? "" : "no lesion is annotated on this slide";
    Object.values(state.viewers).forEach(function (viewer) {
      if (viewer.world.getItemAt(0) && !viewer.lesionSvg) { lesionSvg(viewer); }
    });
    refresh();
  });
  fly.addEventListener("click", function () {
    const b = lesionBounds();
    flyTo(b.x, b.y, b.w, b.h, 0.1);
  });

  document.querySelectorAll(".slide-step").forEach(function (link) {
    link.addEventListener("click", function (e) { e.preventDefault(); go(link.getAttribute("href")); });
  });
  const list = document.getElementById("slide-list");
  if (list) { list.addEventListener("change", function () { go(list.value); }); }
  document.querySelectorAll(".heat-layer, .label-layer, #display, #show-markers").forEach(function (el) {
    el.addEventListener("change", refresh);
  });
  opacity.addEventListener("input", refresh);
  window.slideViewer = state;
}());
