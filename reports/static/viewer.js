/* slideaudit deep-zoom viewer: two synced OpenSeadragon viewers over one slide, map layers on top. */
(function () {
  "use strict";
  const app = document.getElementById("viewer-app");
  const config = JSON.parse(app.dataset.config);
  const slide = config.slide;
  const opacity = document.getElementById("opacity");
  const state = {config: config, viewers: {}, layers: {left: {}, right: {}}, syncing: false};

  function source(url, format) {
    return {Image: {xmlns: "http://schemas.microsoft.com/deepzoom/2008", Url: url, Format: format,
      Overlap: String(slide.overlap), TileSize: String(slide.tileSize),
      Size: {Width: String(slide.width), Height: String(slide.height)}}};
  }

  function chosen(side) {
    return document.querySelector(".heat-layer[data-side=" + side + "]").value;
  }

  function labelsOn() {
    return Array.from(document.querySelectorAll(".label-layer:checked")).map(function (b) { return b.value; });
  }

  /* Show each side's chosen heat map at the slider's opacity and the ticked outlines fully. */
  function refresh() {
    ["left", "right"].forEach(function (side) {
      const heat = chosen(side), on = labelsOn();
      Object.entries(state.layers[side]).forEach(function ([name, item]) {
        const kind = config.layers.find(function (l) { return l.name === name; }).kind;
        item.setOpacity(kind === "heat" ? (name === heat ? opacity.value / 100 : 0) : (on.includes(name) ? 1 : 0));
      });
      legend(side, heat);
    });
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
    const source = state.viewers[from].viewport;
    Object.entries(state.viewers).forEach(function ([side, viewer]) {
      if (side !== from) {
        viewer.viewport.zoomTo(source.getZoom(), null, true);
        viewer.viewport.panTo(source.getCenter(), true);
      }
    });
    state.syncing = false;
  }

  function markerBox(viewer, m) {
    return viewer.world.getItemAt(0).imageToViewportRectangle(m.x, m.y, m.w, m.h);
  }

  function open(side) {
    const viewer = OpenSeadragon({id: "osd-" + side, prefixUrl: config.static + "openseadragon/images/",
      tileSources: source(slide.url, "jpeg"), drawer: "canvas", showNavigator: side === "left",
      maxZoomPixelRatio: 2, visibilityRatio: 0.5});
    state.viewers[side] = viewer;
    viewer.addOnceHandler("open", function () {
      config.layers.forEach(function (layer) {
        viewer.addTiledImage({tileSource: source(layer.url, "png"), opacity: 0,
          success: function (e) { state.layers[side][layer.name] = e.item; refresh(); }});
      });
      config.markers.forEach(function (m) {
        const el = document.createElement("div");
        el.className = "marker " + m.kind;
        el.title = m.label;
        viewer.addOverlay({element: el, location: markerBox(viewer, m)});
      });
      scalebar(side);
    });
    viewer.addHandler("viewport-change", function () { sync(side); });
    viewer.addHandler("animation", function () { scalebar(side); });
  }

  document.querySelector(".heat-layer[data-side=left]").value = config.left;
  document.querySelector(".heat-layer[data-side=right]").value = config.right;
  ["left", "right"].forEach(open);
  const markers = document.getElementById("markers");
  config.markers.forEach(function (m, i) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = m.label;
    markers.appendChild(option);
  });
  markers.addEventListener("change", function () {
    if (markers.value === "") { return; }
    const m = config.markers[Number(markers.value)], viewer = state.viewers.left;
    const box = markerBox(viewer, m);
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(box.x - box.width, box.y - box.height, 3 * box.width, 3 * box.height));
  });
  document.querySelectorAll(".heat-layer, .label-layer").forEach(function (el) { el.addEventListener("change", refresh); });
  opacity.addEventListener("input", refresh);
  window.slideViewer = state;
}());
