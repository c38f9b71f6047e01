"""A Gradio app to try a trained model: prompt box, sampling sliders, streamed output, a Stop button.

    python app.py                                  # the newest run under runs/, http://127.0.0.1:7860
    python app.py runs/smollm2-135M/final --port 7861
    python app.py me/my-smollm2 --share            # a public gradio.live link, only when asked

The heading is the model's name (recipe_config.yaml, model card or config) and its training step.
A blank Seed gives fresh text on each press and shows the seed it drew; type that seed to get the text again.
On a Hugging Face Space the model comes from the MODEL_ID variable (push.py --space sets it).
"""

import argparse
import logging
import os
import random
import socket
import sys
import threading
import time

from generate import GenerationError, LoadedModel, load_model, pick_device, stream_completion
from recipe import cli
from recipe.cli import RecipeError, first_line
from recipe.sampling import MAX_SEED, SamplingSettings, SettingError

from transformers.utils import logging as transformers_logging

LABELS = {
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
    "top_p": "Top-p",
    "top_k": "Top-k",
    "seed": "Seed",
}
log = logging.getLogger("app")


def parse_seed(text: str | None) -> int:
    """A typed seed, or a fresh random one for a blank box."""
    text = (text or "").strip().replace(",", "").replace("_", "")
    if not text:
        return random.randint(0, MAX_SEED)
    try:
        return int(text)
    except ValueError:
        raise SettingError("seed", f"must be a whole number or blank for random (got '{text}')", "42") from None


def settings_from_inputs(max_new_tokens, temperature, top_p, top_k, seed) -> SamplingSettings:
    """The form's values as settings; a blank seed draws a fresh one so that the text can be had again."""
    values = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    for field, value in values.items():
        if value is None:
            raise SettingError(field, "is empty", str(getattr(SamplingSettings(), field)))
    return SamplingSettings(int(max_new_tokens), float(temperature), float(top_p), int(top_k), parse_seed(seed))


def build_app(loaded: LoadedModel):
    import gradio as gr  # noqa: PLC0415 - optional (requirements-app.txt): only the app needs it

    defaults = SamplingSettings()
    # Stop sets the session's event and the running generation ends as if finished. gradio's `cancels=` would
    # end it too, but now and then leaves the output box marked busy for good.
    stop_requests: dict[str, threading.Event] = {}

    def request_stop(request: gr.Request):
        if request.session_hash in stop_requests:
            stop_requests[request.session_hash].set()

    def complete(prompt, max_new_tokens, temperature, top_p, top_k, seed, request: gr.Request):
        try:
            settings = settings_from_inputs(max_new_tokens, temperature, top_p, top_k, seed)
            pieces = stream_completion(loaded, prompt or "", settings)
        except (SettingError, GenerationError) as e:
            # a warning, not an error: the page says what to change, and the last text stays as it was
            gr.Warning(e.for_label(LABELS[e.field]) if isinstance(e, SettingError) else str(e))
            yield gr.skip(), gr.skip()
            return
        note = f"Seed {settings.seed}: type it in the Seed box to get this text again."
        text = prompt or ""
        stop_requested = stop_requests[request.session_hash] = threading.Event()
        try:
            yield text, note
            for piece in pieces:
                if stop_requested.is_set():
                    break
                text += piece
                yield text, note
        except Exception as e:
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {first_line(e)}; try again, or with fewer new tokens") from None
        finally:
            pieces.close()  # ends the model's generation too
            if stop_requests.get(request.session_hash) is stop_requested:
                del stop_requests[request.session_hash]

    with gr.Blocks(title=loaded.title) as app:
        gr.Markdown(f"# {loaded.title}\nA SmolLM2 model trained with smollm2-recipe, running on {loaded.device}.")
        prompt = gr.Textbox(label="Prompt (empty: start a new document)", value="ROMEO:", lines=3, elem_id="prompt")
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, 512, value=defaults.max_new_tokens, step=1, label=LABELS["max_new_tokens"], elem_id="max-new-tokens"
            )
            temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
        with gr.Row():
            top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0 = off)")
            # a Textbox, not a Number: gradio shows a blank Number as 0, and blank is the random default here
            seed = gr.Textbox(value="", placeholder="random", label="Seed (blank = random)", elem_id="seed")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
        output = gr.Textbox(label="Prompt + generated continuation", lines=12, elem_id="output")
        seed_note = gr.Markdown(elem_id="seed-note")
        generate.click(complete, [prompt, max_new_tokens, temperature, top_p, top_k, seed], [output, seed_note])
        stop.click(request_stop, None, None, queue=False)
    return app


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number from 1 to 65535 (e.g. 7860)")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser("app.py", __doc__)
    parser.add_argument(
        "model", nargs="?", default=os.environ.get("MODEL_ID"), help="folder or Hub id (default: the newest run)"
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--device", default="auto")
    return parser.parse(argv)


def check_port_free(host: str, port: int) -> None:
    """Fail before the model loads, not after, when the address cannot be served."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed port is free
            s.bind((host, port))
    except OSError as e:
        raise RecipeError(f"cannot serve on {host}:{port} ({e.strerror or e}); pick a free port with --port") from None


@cli.command("stopped serving")
def main(argv: list[str] | None = None) -> int:
    transformers_logging.disable_progress_bar()  # the console says what is served, not how its weights loaded
    args = parse_args(argv)
    check_port_free(args.host, args.port)
    pick_device(args.device)
    loaded = load_model(args.model, args.device)
    app = build_app(loaded).queue()
    try:  # quiet: gradio's own lines name its launch() arguments, not this app's flags
        app.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True)
    except OSError as e:  # the port was taken while the model loaded
        raise RecipeError(f"cannot serve on {args.host}:{args.port} ({e}); pick a free port with --port") from None
    if app.share_url:
        share = f" and {app.share_url}"
    elif args.share:
        share = " (no public link: gradio.live could not be reached)"
    else:
        share = "; add --share for a public link"
    print(f"serving {loaded.title} on http://{args.host}:{args.port}{share}; Ctrl-C to stop", flush=True)
    try:  # not gradio's block_thread(): it takes Ctrl-C for a normal end and prints a line of its own
        while app.is_running:
            time.sleep(0.1)
    finally:
        app.close(verbose=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
