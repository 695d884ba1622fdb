"""vstream's Gradio app: point it at a live feed and chat with it while it plays.

    python app.py                          # tiny offline preset on http://127.0.0.1:7860
    python app.py --model Qwen/Qwen2.5-VL-3B-Instruct --port 8000 --auth me:secret

UI only: every action calls ``vstream.app.controller.AppController`` (which calls ``vstream.api``); no model
logic lives here. The app binds 127.0.0.1 unless ``--host`` is given; uploads are limited in size
and type, and saved memories are only ever read from the app's own ``--memory-root`` by name.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

logger = logging.getLogger("vstream.app")

DEFAULT_MODEL = "tiny-smolvlm"
WEBCAM_STREAM_EVERY_S = 0.2  # seconds between webcam frames sent by the browser (5 fps)

CSS = """
#status table { font-size: 0.85em; }
#status td, #status th { padding: 2px 8px; }
#status td:first-child { color: var(--body-text-color-subdued); }
#notice p { margin: 0.2em 0; }
footer { display: none !important; }
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python app.py``."""
    from vstream.config import PRESETS as CONFIG_PRESETS
    from vstream.models.registry import PRESETS as MODEL_PRESETS

    p = argparse.ArgumentParser(prog="python app.py", description="vstream: chat with a live video feed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a preset ({', '.join(MODEL_PRESETS)}), a hub id or a local checkpoint directory")
    p.add_argument("--config", default=None, choices=sorted(CONFIG_PRESETS),
                   help="config preset (default: 'tiny' for tiny-* models, else 'default')")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; give 0.0.0.0 only on a trusted network")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--auth", default=None, metavar="USER:PASS",
                   help="require this login (or set VSTREAM_APP_AUTH=user:pass to keep it out of `ps`)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest video upload accepted")
    p.add_argument("--memory-root", default="vstream_memory",
                   help="folder where memories are saved and loaded by name")
    p.add_argument("--commentary", action="store_true", help="start with live commentary on")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        p.error("--max-upload-mb must be > 0")
    auth = args.auth or os.environ.get("VSTREAM_APP_AUTH")
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            p.error("--auth wants USER:PASS with both parts non-empty")
        args.auth = (user, password)
    else:
        args.auth = None
    return args


def launch_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``demo.launch``: bind address, port, login, upload limit, theme."""
    import gradio as gr

    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    return {"server_name": args.host, "server_port": args.port, "auth": args.auth,
            "max_file_size": f"{args.max_upload_mb:g}mb", "share": False, "inbrowser": False,
            "show_error": True, "theme": theme, "css": CSS}


def build_app(ctl, args: argparse.Namespace):
    """Build the Blocks UI around ``ctl`` (an AppController); returns ``(demo, launch_kwargs)``."""
    import gradio as gr

    from vstream.app.controller import SHARING_NOTE, format_status, latency_frame
    from vstream.sources import VIDEO_EXTENSIONS

    def act(fn, *a):
        """Run a controller action; a ValueError becomes a warning toast and the notice text."""
        try:
            return f"✓ {fn(*a)}"
        except ValueError as e:
            gr.Warning(str(e))
            return f"⚠ {e}"

    def saved_choices():
        return gr.update(choices=ctl.list_saved())

    with gr.Blocks(title="vstream", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## vstream: chat with a live video\nModel **{ctl.model_name}** on **{ctl.device}**. "
                    "Pick a source, then ask about what it has seen while it keeps watching.\n\n"
                    f"*{SHARING_NOTE}*", elem_id="sharing")
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Webcam"):
                        cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                       webcam_options=gr.WebcamOptions(mirror=False), height=240, elem_id="webcam")
                        gr.Markdown("Allow the camera, then press record: frames stream to the agent. "
                                    "If another source is running, press **Use webcam** to switch.")
                        use_cam = gr.Button("Use webcam", size="sm")
                    with gr.Tab("URL"):
                        url = gr.Textbox(label="Stream URL", placeholder="rtsp://… or http(s)://…")
                        url_btn = gr.Button("Watch URL", size="sm")
                    with gr.Tab("Upload"):
                        upload = gr.File(label=f"Video file (played as live; at most {args.max_upload_mb:g} MB)",
                                         file_types=list(VIDEO_EXTENSIONS), type="filepath", height=140,
                                         elem_id="upload")
                    with gr.Tab("Memory"):
                        with gr.Row():
                            save_name = gr.Textbox(label="Save current memory as", placeholder="lecture-1")
                            save_btn = gr.Button("Save", size="sm")
                        with gr.Row():
                            saved = gr.Dropdown(label="Saved memories", choices=ctl.list_saved(),
                                                allow_custom_value=False)
                            load_btn = gr.Button("Load", size="sm")
                notice = gr.Markdown("", elem_id="notice")
                status = gr.Markdown(format_status(ctl.status()), elem_id="status")
                plot = gr.LinePlot(latency_frame([]), x="stream time (s)", y="chunk latency (ms)", height=200,
                                   title="Per-chunk latency", elem_id="latency-plot")
            with gr.Column(scale=3):
                chat = gr.Chatbot([], label="Your chat (this browser only)", height=380, elem_id="chat",
                                  feedback_options=None, buttons=["copy"],
                                  group_consecutive_messages=False)
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask about the stream…", show_label=False, scale=5,
                                          elem_id="question")
                    send = gr.Button("Ask", variant="primary", scale=1, min_width=80)
                evidence = gr.Gallery(label="Evidence for the latest answer", columns=4, height=170, fit_columns=False,
                                      object_fit="contain", elem_id="evidence", format="jpeg")
                with gr.Row():
                    with gr.Column():
                        comm_on = gr.Checkbox(value=ctl.commentary_next, label="Live commentary",
                                              info="Takes effect at the next source start (changing the source "
                                                   "or pressing 'Use webcam' restarts the session)")
                        comm_box = gr.Textbox(label="Commentary", lines=6, max_lines=6, interactive=False,
                                              elem_id="commentary", autoscroll=True)
                    with gr.Column():
                        alert_text = gr.Textbox(label="Tell me when…", placeholder="a person enters the room")
                        default_thr = ctl.alert_threshold or ctl.agent.config.responder.notify_threshold
                        alert_thr = gr.Slider(0.01, 0.99, value=default_thr, step=0.01, label="Alert threshold",
                                              info="P(yes) above which an alert fires")
                        with gr.Row():
                            alert_btn = gr.Button("Add alert", size="sm")
                            clear_btn = gr.Button("Clear alerts", size="sm")
        versions = gr.State((-1, -1, -1))
        my_chat = gr.State(None)  # this browser's Chat (gradio keeps one State value per browser session)
        timer = gr.Timer(1.0)

        # ---- callbacks ----------------------------------------------------------------------
        def on_frame(frame):
            ctl.push_frame(frame)

        def own_chat(c):
            return c if c is not None else ctl.new_chat()

        def on_ask(q, c):
            c = own_chat(c)
            try:
                for msgs in ctl.ask(q, chat=c):
                    yield msgs, gr.skip(), "", c
            except ValueError as e:
                gr.Warning(str(e))
                yield gr.skip(), gr.skip(), gr.skip(), c
                return
            yield c.messages(), c.evidence(), "", c

        def on_tick(seen, c):
            c = own_chat(c)
            st = ctl.status()
            now = (c.version, c.evidence_version, ctl.commentary_version)
            return (format_status(st), latency_frame(st["latency_points"]),
                    c.messages() if now[0] != seen[0] else gr.skip(),
                    c.evidence() if now[1] != seen[1] else gr.skip(),
                    ctl.commentary_text() if now[2] != seen[2] else gr.skip(), now, c)

        cam.stream(on_frame, inputs=[cam], outputs=None, stream_every=WEBCAM_STREAM_EVERY_S,
                   show_progress="hidden", concurrency_limit=1)
        use_cam.click(lambda: act(ctl.start_webcam), outputs=notice)
        url_btn.click(lambda u: act(ctl.start_url, u), inputs=url, outputs=notice)
        url.submit(lambda u: act(ctl.start_url, u), inputs=url, outputs=notice)
        upload.upload(lambda f: act(ctl.start_upload, f), inputs=upload, outputs=notice)
        save_btn.click(lambda n: act(ctl.save, n), inputs=save_name, outputs=notice).then(
            saved_choices, outputs=saved)
        load_btn.click(lambda n: act(ctl.load, n), inputs=saved, outputs=notice)
        question.submit(on_ask, inputs=[question, my_chat], outputs=[chat, evidence, question, my_chat])
        send.click(on_ask, inputs=[question, my_chat], outputs=[chat, evidence, question, my_chat])
        comm_on.change(lambda on: act(ctl.toggle_commentary, on), inputs=comm_on, outputs=notice)
        alert_btn.click(lambda t, thr: act(ctl.add_alert, t, thr), inputs=[alert_text, alert_thr], outputs=notice)
        clear_btn.click(lambda: act(ctl.clear_alerts), outputs=notice)
        timer.tick(on_tick, inputs=[versions, my_chat],
                   outputs=[status, plot, chat, evidence, comm_box, versions, my_chat],
                   show_progress="hidden", trigger_mode="once")
        demo.load(saved_choices, outputs=saved)
        demo.load(lambda c: own_chat(c), inputs=my_chat, outputs=my_chat)  # a chat per browser from the start
    return demo, launch_kwargs(args)


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the UI and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vstream.api import Agent
    from vstream.app.controller import AppController

    try:
        agent = Agent.from_pretrained(args.model, config=args.config, device=args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    ctl = AppController(agent, memory_root=Path(args.memory_root), max_upload_mb=args.max_upload_mb,
                        commentary=args.commentary)
    demo, kw = build_app(ctl, args)
    logger.info("model %s on %s; serving on http://%s:%d", ctl.model_name, ctl.device, args.host, args.port)
    try:
        demo.queue(default_concurrency_limit=1).launch(**kw)
    finally:
        ctl.close()


if __name__ == "__main__":
    main()
