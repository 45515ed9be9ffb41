/* synflow report: flicker controls. Each .flicker block has a stage holding a background
   layer (reference) and a foreground layer (moving): either an inline SVG with
   <g class="foreground-svg"> or two stacked <img>, the top one .flicker-fg. */
(function () {
  "use strict";
  function setup(block) {
    var stage = block.querySelector(".flicker-stage");
    var fg = stage && stage.querySelector(".foreground-svg, img.flicker-fg");
    if (!fg) { return; }
    var slider = block.querySelector("input.flicker-slider");
    var state = block.querySelector(".state");
    var names = [block.getAttribute("data-bg-label") || "reference",
                 block.getAttribute("data-fg-label") || "moving"];
    var buttons = block.querySelectorAll("button[data-mode]");
    function mark(mode, text) {
      buttons.forEach(function (b) {
        b.classList.toggle("active", b.getAttribute("data-mode") === mode);
      });
      if (state) { state.textContent = text; }
    }
    function show(opacity) {
      stage.classList.remove("playing");
      fg.style.animation = "none";
      fg.style.opacity = String(opacity);
      if (slider) { slider.value = String(Math.round(opacity * 100)); }
      var mode = opacity >= 1 ? "fg" : (opacity <= 0 ? "bg" : "blend");
      var text = opacity >= 1 ? "showing: " + names[1] :
        (opacity <= 0 ? "showing: " + names[0] :
         "blend: " + Math.round(opacity * 100) + "% " + names[1]);
      mark(mode, text);
    }
    function play() {
      fg.style.animation = "";
      fg.style.opacity = "";
      stage.classList.add("playing");
      mark("play", "flickering between " + names[0] + " and " + names[1]);
    }
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        var m = b.getAttribute("data-mode");
        if (m === "play") { play(); } else if (m === "bg") { show(0); } else { show(1); }
      });
    });
    if (slider) {
      slider.addEventListener("input", function () { show(Number(slider.value) / 100); });
    }
    stage.addEventListener("click", function () {
      var cur = fg.style.opacity === "" ? 1 : Number(fg.style.opacity);
      show(cur >= 0.5 ? 0 : 1);
    });
    mark("", "hover over the image to flicker, click it to switch");
  }
  function init() {
    document.querySelectorAll(".flicker").forEach(setup);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else { init(); }
})();
