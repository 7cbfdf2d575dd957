"""A sampling playground: sliders for every knob, a Generate button, streamed text, a live distribution chart.

ipywidgets and matplotlib are imported when a panel is built, so `import kvgpt` never needs them.
Uses only the API common to ipywidgets 7.7 (Colab) and 8.x (JupyterLab). Nothing is printed: text goes
into widget values and the chart into the Output widget's `outputs`, so a cell displaying the panel has
no stdout and callbacks never leak into other cells. Introduced in notebooks/06_sampling.ipynb.
"""

from __future__ import annotations

import base64
import html
import io

import torch

from .generation import AutoregressiveGenerator
from .sampling import Sampler

# redraw on release only; "initial" sizes each label to its text, so none is cut ("temperature (0=gre...")
SLIDER = {"continuous_update": False, "style": {"description_width": "initial"}}


class SamplingPanel:
    """Prompt, knobs and seed -> streamed text, plus the processed next-token distribution after the prompt.

    `widget` is the VBox to display. Every control is an attribute (prompt, temperature, top_k, top_p,
    repetition_penalty, max_new_tokens, seed, button); results land in `output` (HTML, the text),
    `chart` (Output, the distribution), `message` (HTML, errors and stats) and in `text`, `logits`,
    `probs` for code. Bad input becomes a message in the panel, never an exception. The max-new-tokens
    slider's bound follows the prompt (prompt + new tokens <= block_size). `snapshot()` draws the panel's
    state as one matplotlib Figure: the static picture a reader without a live kernel (GitHub) can see.
    Shapes: logits (V,) the model's raw scores after the prompt; probs (V,) what the knobs make of them.

    Introduced in notebooks/06_sampling.ipynb.
    """

    def __init__(self, model, tokenizer, prompt: str = "ROMEO:\n", max_new_tokens: int = 100, top: int = 20):
        self.model, self.tokenizer, self.top = model, tokenizer, top
        self.generator = AutoregressiveGenerator(model)
        self.text, self.logits, self.probs, self._ids = "", None, None, None  # _ids: the prompt behind logits
        self._stats = ""  # the last generation's stats line, kept when a knob moves afterwards
        self._build(prompt, max_new_tokens)
        self.button.on_click(lambda _: self.generate())
        for control in [self.prompt, self.temperature, self.top_k, self.top_p, self.repetition_penalty]:
            control.observe(lambda _: self.update_chart(), names="value")
        self.update_chart()

    def _build(self, prompt: str, max_new_tokens: int) -> None:
        """Create the controls and outputs and lay them out in `self.widget`."""
        import ipywidgets as w

        block, vocab = self.model.config.block_size, self.model.config.vocab_size
        self.prompt = w.Textarea(value=prompt, description="prompt", continuous_update=False,
                                 layout=w.Layout(width="95%"))
        self.temperature = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="temperature (0=greedy)",
                                         **SLIDER)
        self.top_k = w.IntSlider(value=0, min=0, max=vocab, description="top-k (0=off)", **SLIDER)
        self.top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1=off)", **SLIDER)
        self.repetition_penalty = w.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.05,
                                                description="repetition penalty", **SLIDER)
        self.max_new_tokens = w.IntSlider(value=min(max_new_tokens, block - 1), min=1, max=block - 1,
                                          description="max new tokens", **SLIDER)
        self.seed = w.IntText(value=0, description="seed (0 .. 2**64-1)", style=SLIDER["style"])
        self.button = w.Button(description="Generate", button_style="primary")
        self.output, self.message, self.chart = w.HTML(), w.HTML(), w.Output()
        left = w.VBox([self.temperature, self.top_k, self.seed])
        right = w.VBox([self.top_p, self.repetition_penalty, self.max_new_tokens])
        self.widget = w.VBox([self.prompt, w.HBox([left, right]), self.button, self.message, self.output, self.chart])

    def sampler(self) -> Sampler:
        """The Sampler the controls describe (raises ValueError for a value it rejects)."""
        return Sampler(temperature=self.temperature.value, top_k=self.top_k.value, top_p=self.top_p.value,
                       repetition_penalty=self.repetition_penalty.value, seed=self.seed.value)

    def prompt_ids(self) -> list[int]:
        """The prompt box's text as token ids; ValueError for an empty prompt or an unknown character."""
        if not self.prompt.value:
            raise ValueError("the prompt is empty: type at least one character to continue")
        return self.tokenizer.encode(self.prompt.value)

    def generate(self) -> str:
        """Stream a continuation into `output` (one update per token); return the prompt + new text ("" on error)."""
        self.text, self.output.value = "", ""
        try:
            ids, sampler = self.prompt_ids(), self.sampler()
            new = []
            for token in self.generator.stream(ids, self.max_new_tokens.value, sampler,
                                               eos_token_id=self.tokenizer.eos_token_id):
                new.append(token)  # decode all new ids each time: a BPE token may end mid-character
                self._show_text(self.prompt.value, self.tokenizer.decode(new))
            self.text = self.prompt.value + self.tokenizer.decode(new)
            stats = self.generator.last_stats
            self._stats = (f"{stats.n_new_tokens} tokens · prefill {stats.prefill_ms:.0f} ms · "
                           f"decode {stats.decode_tokens_per_s:.0f} tokens/s · {sampler!r}")
            self._say(self._stats)
        except Exception as e:  # noqa: BLE001 -- a UI callback has nowhere to raise to: JupyterLab would swallow it
            self._say(f"{type(e).__name__}: {e}", error=True)
        return self.text

    def update_chart(self) -> None:
        """Redraw the raw vs processed next-token distribution after the prompt for the current knobs."""
        try:
            ids = self.prompt_ids()
            if ids != self._ids:  # only the knobs changed: the model need not run again
                self.logits, self._ids = self._next_logits(ids), ids  # (V,)
                self._bound_new_tokens(len(ids))
            self.probs = self.sampler().probs(self.logits, history=ids)  # (V,)
            self._draw(self.logits.softmax(-1), self.probs)
            self._say(self._stats)
        except Exception as e:  # noqa: BLE001 -- as in generate: show it, keep the panel alive
            self.probs, self.chart.outputs = None, ()
            self._say(f"{type(e).__name__}: {e}", error=True)

    def _bound_new_tokens(self, prompt_len: int) -> None:
        """Let the slider reach exactly what fits: prompt_len + max_new_tokens <= block_size."""
        room = max(self.model.config.block_size - prompt_len, 1)
        self.max_new_tokens.value = min(self.max_new_tokens.value, room)  # lower the value before the bound
        self.max_new_tokens.max = room

    def snapshot(self):
        """The panel's current state as one matplotlib Figure: knob values, the text, the distribution chart.

        A live widget needs a kernel; this picture is what a stored notebook (GitHub) can show instead.
        """
        import textwrap

        from matplotlib.figure import Figure

        from .plots import plot_distribution

        k = self.top_k.value or "off"
        knobs = (f"temperature {self.temperature.value:.2f} · top-k {k} · top-p {self.top_p.value:.2f} · "
                 f"repetition penalty {self.repetition_penalty.value:.2f} · seed {self.seed.value} · "
                 f"max new tokens {self.max_new_tokens.value}")
        wrapped = [textwrap.fill(line, 90) or " " for line in (self.text or self.prompt.value).splitlines()]
        lines = "\n".join(wrapped).splitlines()[:14]  # at most 14 lines of text in the picture
        text_height = 0.16 * (len(lines) + 3)  # inches: two header lines, a gap, the text
        fig = Figure(figsize=(8, text_height + 3.2))
        top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [text_height, 3.2]})
        top.axis("off")
        _ = top.text(0, 1, "SamplingPanel (a picture of its state)\n" + knobs, va="top", fontsize=9, weight="bold")
        _ = top.text(0, 1 - 3 / (len(lines) + 3), "\n".join(lines), va="top", family="monospace", fontsize=8)
        if self.probs is not None:
            plot_distribution(self.logits.softmax(-1), self.probs, self.tokenizer, self.top,
                              ("softmax(logits)", "after the knobs"), ax=bottom)
            kept = int((self.probs > 0).sum())
            _ = bottom.set_title(f"next token after the prompt: kept {kept} of {self.probs.numel()}", fontsize=9)
        fig.tight_layout()
        return fig

    def _next_logits(self, ids: list[int]) -> torch.Tensor:
        """The model's logits for the token after the prompt (its last block_size tokens). -> (V,) fp32 on CPU."""
        x = torch.tensor([ids[-self.model.config.block_size:]], device=next(self.model.parameters()).device)
        with torch.inference_mode():
            return self.model(x, last_only=True)[0].float().cpu()  # (V,)

    def _draw(self, before: torch.Tensor, after: torch.Tensor) -> None:
        import matplotlib.pyplot as plt

        from .plots import plot_distribution

        fig = plot_distribution(before, after, self.tokenizer, self.top, ("softmax(logits)", "after the knobs"))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)  # else the inline backend would also show it under the next cell
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.chart.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": {"image/png": png, "text/plain": "<next-token distribution>"}},)

    def _show_text(self, prompt: str, new: str) -> None:
        self.output.value = (f'<pre style="white-space: pre-wrap">{html.escape(prompt, quote=False)}'
                             f"<b>{html.escape(new, quote=False)}</b></pre>")

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self.message.value = f'<span style="color: {color}">{html.escape(text, quote=False)}</span>' if text else ""
