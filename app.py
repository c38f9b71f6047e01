"""A Gradio app to try a trained model: prompt box, sampling sliders, streamed output.

    python app.py runs/smollm2-135M/final          # http://127.0.0.1:7860
    python app.py me/my-smollm2 --share            # a public gradio.live link, only when asked

On a Hugging Face Space the model comes from the MODEL_ID variable (push.py --space sets it).
"""

from __future__ import annotations

import argparse
import os
import sys

from generate import LoadedModel, LoadError, SamplingSettings, load_model, stream_completion


def build_app(loaded: LoadedModel):
    import gradio as gr

    defaults = SamplingSettings()

    def complete(prompt, max_new_tokens, temperature, top_p, top_k, seed):
        settings = SamplingSettings(int(max_new_tokens), float(temperature), float(top_p), int(top_k), int(seed))
        text = prompt
        yield text
        for piece in stream_completion(loaded, prompt, settings):
            text += piece
            yield text

    with gr.Blocks(title=loaded.name) as app:
        gr.Markdown(f"# {loaded.title}\nA SmolLM2 model trained with smollm2-recipe, running on {loaded.device}.")
        prompt = gr.Textbox(label="Prompt", value="ROMEO:", lines=3, elem_id="prompt")
        with gr.Row():
            max_new_tokens = gr.Slider(1, 512, value=defaults.max_new_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
        with gr.Row():
            top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0 = off)")
            seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        output = gr.Textbox(label="Text", lines=12, elem_id="output")
        button.click(complete, [prompt, max_new_tokens, temperature, top_p, top_k, seed], output)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=os.environ.get("MODEL_ID"), help="folder or Hub id")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model:
        print("error: no model: pass a final/ or checkpoint-N folder or a Hub id (or set MODEL_ID)", file=sys.stderr)
        return 2
    try:
        loaded = load_model(args.model, args.device)
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    build_app(loaded).queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
