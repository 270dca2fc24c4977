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
      if (widget && message?.text) widget.value = [].concat(message.text).join("\n");
    };
  },
});
