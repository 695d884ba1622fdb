"""Gradio builders of the app's Memory and Cameras tabs (UI only: every action calls the AppController,
its ``shelf`` (``vstream.app.memory_tab``) or its ``cameras`` (``vstream.app.cameras``)).
"""

import logging

from vstream.app.chat import human_bytes
from vstream.app.memory_tab import moment_caption
from vstream.app.timerange import EXAMPLES, range_args, range_note
from vstream.app.view import jpeg_image, when_text
from vstream.clock import NOTHING_RECORDED

logger = logging.getLogger(__name__)


def act(fn, *a) -> str:
    """Run a controller action; a ValueError becomes a warning toast and the notice text."""
    import gradio as gr

    try:
        return f"✓ {fn(*a)}"
    except ValueError as e:
        gr.Warning(str(e))
        return f"⚠ {e}"


def _saved_rows(ctl) -> list[list]:
    return [[m.name, human_bytes(m.bytes), f"{m.length_s:.1f} s", m.vision, m.speech, m.text]
            for m in ctl.shelf.describe()]


def memory_tab(gr, ctl) -> None:
    """Save / load by name, the saved memories with sizes, search with thumbnails, a timeline (both within the
    since / until fields' time range), delete."""
    with gr.Row():
        save_name = gr.Textbox(label="Save the current memory as", placeholder="lecture-1", elem_id="save-name")
        save_btn = gr.Button("Save", size="sm", elem_id="save-btn")
    saved_table = gr.Dataframe(headers=["name", "size", "length", "video chunks", "speech lines", "other text"],
                               value=_saved_rows(ctl), interactive=False, elem_id="saved-table",
                               label="Saved memories")
    with gr.Row():
        pick = gr.Dropdown(label="Saved memory", choices=ctl.list_saved(), elem_id="saved-pick", scale=2)
        load_btn = gr.Button("Load as the source", size="sm", scale=1)
        confirm = gr.Textbox(label="Type its name to confirm delete", elem_id="delete-confirm", scale=2)
        del_btn = gr.Button("Delete", size="sm", variant="stop", scale=1, elem_id="delete-btn")
    mem_notice = gr.Markdown("", elem_id="memory-notice")
    with gr.Row():  # the time range of the search and the timeline (empty: no limit; the memory's clock zone)
        since = gr.Textbox(label="Since (empty: from the start)", placeholder=EXAMPLES, elem_id="memory-since", scale=2)
        until = gr.Textbox(label="Until (empty: to the end)", placeholder=EXAMPLES, elem_id="memory-until", scale=2)
        range_btn = gr.Button("Show this time range", size="sm", scale=1, elem_id="memory-range-btn")
    with gr.Row():
        query = gr.Textbox(label="Search the picked memory", placeholder="how far away is the storm",
                           elem_id="search-query", scale=4)
        search_btn = gr.Button("Search", size="sm", scale=1, elem_id="search-btn")
    hits = gr.Gallery(label="Search results (best first; click one to see it)", columns=6, height=170,
                      elem_id="search-hits", allow_preview=False,
                      object_fit="contain", fit_columns=False)
    with gr.Row():
        hit_img = gr.Image(label="Moment", interactive=False, height=260, type="pil", elem_id="search-focus")
        hit_cap = gr.Markdown("", elem_id="search-caption")
    timeline = gr.Gallery(label="Timeline of the stored moments", columns=8, height=200, elem_id="timeline",
                          allow_preview=False, object_fit="contain", fit_columns=False)
    found = gr.State([])

    def refresh():
        names = ctl.list_saved()
        return _saved_rows(ctl), gr.update(choices=names)

    def on_search(name, q, since_s, until_s):
        try:
            moments = ctl.shelf.search(name, q, since=since_s, until=until_s)
        except ValueError as e:
            gr.Warning(str(e))
            return gr.skip(), f"⚠ {e}", []
        items = [(m.thumbnail, moment_caption(m)) for m in moments if m.thumbnail]
        listed = [m for m in moments if m.thumbnail]
        return items, f"{len(moments)} moment(s) found in {name!r}{range_note(range_args(since_s, until_s))}.", listed

    def on_hit(listed, evt: gr.SelectData):
        m = listed[evt.index] if 0 <= evt.index < len(listed) else None
        if m is None:
            return None, ""
        from PIL import Image

        return Image.open(m.thumbnail).convert("RGB"), (f"**{when_text(m)}** · {m.source} · "
                                                        f"similarity {m.score:+.2f}\n\n> {m.text}")

    def on_timeline(name, since_s, until_s):
        if not name:
            return [], gr.skip()
        kw = range_args(since_s, until_s)
        try:
            moments = ctl.shelf.timeline(name, **kw)
        except ValueError as e:
            gr.Warning(str(e))
            return [], f"⚠ {e}"
        note = gr.skip()  # without a range the notice keeps what the last action said
        if kw:
            note = (f"Timeline of {name!r}{range_note(kw)}: {len(moments)} moment(s)." if moments
                    else NOTHING_RECORDED)
        out = []
        for m in moments:
            img = jpeg_image(m["thumbnail"])
            if img is None:
                from PIL import Image

                img = Image.new("RGB", (160, 90), (60, 60, 90))
            out.append((img, moment_caption(m)))
        return out, note

    save_btn.click(lambda n: act(ctl.save, n), inputs=save_name, outputs=mem_notice).then(
        refresh, outputs=[saved_table, pick])
    load_btn.click(lambda n: act(ctl.load, n), inputs=pick, outputs=mem_notice)
    del_btn.click(lambda n, c: act(ctl.shelf.delete, n, c), inputs=[pick, confirm], outputs=mem_notice).then(
        refresh, outputs=[saved_table, pick])
    search_btn.click(on_search, inputs=[pick, query, since, until], outputs=[hits, mem_notice, found])
    query.submit(on_search, inputs=[pick, query, since, until], outputs=[hits, mem_notice, found])
    hits.select(on_hit, inputs=[found], outputs=[hit_img, hit_cap])
    for trigger in (pick.change, range_btn.click, since.submit, until.submit):
        trigger(on_timeline, inputs=[pick, since, until], outputs=[timeline, mem_notice])


def cameras_tab(gr, ctl) -> None:
    """A grid of the fleet's cameras (latest frame, status, alerts), add / remove, one question to all."""
    from vstream.sources import VIDEO_EXTENSIONS, is_url

    gr.Markdown("Many cameras on the one model (`vstream.Fleet`): add a stream URL or a video file per camera.")
    with gr.Row():
        cam_id = gr.Textbox(label="Camera name", placeholder="cam-1", elem_id="cam-id", scale=1)
        cam_url = gr.Textbox(label="Stream URL (or upload a file)", placeholder="rtsp://…", elem_id="cam-url",
                             scale=2)
        cam_file = gr.File(label="…or a video file", file_types=list(VIDEO_EXTENSIONS), type="filepath",
                           height=130, elem_id="cam-file", scale=2)
        cam_alert = gr.Textbox(label="Alert (optional)", placeholder="a person appears", elem_id="cam-alert", scale=2)
    with gr.Row():
        add_btn = gr.Button("Add camera", size="sm", variant="primary", elem_id="cam-add")
        rm_pick = gr.Dropdown(label="Camera", choices=[], elem_id="cam-pick")
        rm_btn = gr.Button("Remove camera", size="sm", elem_id="cam-remove")
    cam_notice = gr.Markdown("", elem_id="cam-notice")
    grid = gr.Gallery(label="Cameras (latest frame · state · stream time · chunks · alerts)", columns=4,
                      height=340, elem_id="cam-grid", allow_preview=False,
                      object_fit="contain", fit_columns=False)
    with gr.Row():
        ask_q = gr.Textbox(label="Ask every camera", placeholder="where is the red square?", elem_id="cam-question",
                           scale=4)
        ask_btn = gr.Button("Ask all", size="sm", scale=1, elem_id="cam-ask")
    ask_md = gr.Markdown("", elem_id="cam-answers")
    ask_ev = gr.Gallery(label="Per-camera evidence", columns=6, height=170, elem_id="cam-evidence",
                        allow_preview=False, object_fit="contain", fit_columns=False)
    cam_timer = gr.Timer(2.0)

    def on_add(cid, url, f, alert):
        if url and url.strip():
            if not is_url(url.strip()):
                return act(_raise, "give a network URL (rtsp://, http(s)://…) or upload a file"), gr.skip()
            src, label = url.strip(), url.strip()
        elif f:
            try:
                p = ctl.check_upload(f)
            except ValueError as e:
                return act(_raise, str(e)), gr.skip()
            src, label = str(p), p.name
        else:
            return act(_raise, "give the camera a stream URL or a video file"), gr.skip()
        msg = act(ctl.cameras.add, cid, src, label, alert)
        return msg, gr.update(choices=ctl.cameras.ids())

    def on_remove(cid):
        msg = act(ctl.cameras.remove, cid)
        return msg, gr.update(choices=ctl.cameras.ids(), value=None)

    def on_ask(q):
        try:
            items, md = ctl.cameras.ask_all(q)
        except ValueError as e:
            gr.Warning(str(e))
            return f"⚠ {e}", gr.skip()
        return md, items

    add_btn.click(on_add, inputs=[cam_id, cam_url, cam_file, cam_alert], outputs=[cam_notice, rm_pick])
    rm_btn.click(on_remove, inputs=rm_pick, outputs=[cam_notice, rm_pick])
    ask_btn.click(on_ask, inputs=ask_q, outputs=[ask_md, ask_ev])
    ask_q.submit(on_ask, inputs=ask_q, outputs=[ask_md, ask_ev])
    cam_timer.tick(lambda: ctl.cameras.grid() if ctl.cameras.fleet is not None else gr.skip(), outputs=grid,
                   show_progress="hidden", trigger_mode="once")


def _raise(msg: str):
    raise ValueError(msg)
