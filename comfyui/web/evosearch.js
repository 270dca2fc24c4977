// evosearch for ComfyUI: the Save Record node shows the summary it returns as {"ui": {"text": [summary]}}
// (best reward, NFE spent, the judge's verdict), the way ComfyUI's own Preview Any node shows its text.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODE = "EvoSearchSaveRecord";
const WIDGET = "summary";

app.registerExtension({
  name: "evosearch.SaveRecordSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const { widget } = ComfyWidgets["STRING"](this, WIDGET, ["STRING", { multiline: true }], app);
      widget.serialize = false; // a display, not an input: not saved with the workflow
      if (widget.element) {
        widget.element.readOnly = true;
        widget.element.placeholder = "best reward, NFE and the judge's verdict appear here after a run";
      }
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget || !message?.text) return;
      const text = [].concat(message.text).join("\n");
      widget.value = text;
      // grow the node so that every line shows (the judge's line was cut off unless resized by hand)
      const lines = text.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / 70)), 0);
      const width = Math.max(this.size[0], 460);
      const height = Math.max(this.size[1], 60 + lines * 16);
      if (widget.element) widget.element.style.minHeight = `${lines * 16 + 8}px`;
      this.setSize([width, height]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
