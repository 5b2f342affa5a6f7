"""Test-only Krita plugin: when env ACE_GUI_TEST names a config file, drive the ACE++ docker in the real GUI.

A step machine on the shared harness (runner_harness, copied in by krita_runner.install_runner): name -> [ok, detail]
checks written to the config's result file, then os._exit.
"""

import traceback

from .runner_harness import start_on_window


def _run(harness):
    from ace_bridge.docker import AceBridgeDocker
    from ace_bridge.document import node_id
    from ace_bridge.qt_compat import QTimer
    from krita import Selection

    cfg, app, check, wait = harness.cfg, harness.app, harness.check, harness.wait
    state = {"finished": {}}

    def new_doc(name):
        doc = app.createDocument(96, 64, name, "RGBA", "U8", "", 72.0)
        app.activeWindow().addView(doc)
        bg = doc.rootNode().childNodes()[0]
        bg.setPixelData(bytes((200, 120, 40, 255)) * (96 * 64), 0, 0, 96, 64)
        sel = Selection()
        sel.select(30, 16, 40, 30, 255)
        sel.feather(4)
        doc.setSelection(sel)
        doc.refreshProjection()
        return doc

    def steps():
        docker = AceBridgeDocker.instances[-1] if AceBridgeDocker.instances else None
        check("docker_exists", docker is not None, len(AceBridgeDocker.instances))
        if docker is None:
            return
        gen_action = app.action("ace_bridge_generate")
        check(
            "generate_shortcut_ctrl_enter",
            gen_action is not None and gen_action.shortcut().toString() in ("Ctrl+Return", "Ctrl+Enter"),
            gen_action.shortcut().toString() if gen_action else None,
        )
        docker.show()
        docker.setVisible(True)
        ctl = docker.controller
        # This story is about results inserted at once; the preview strip has its own (test_krita_preview.py).
        docker.preview_first_box.setChecked(False)
        ctl.job_finished.connect(lambda lid, st: state["finished"].__setitem__(lid, st))
        docker.url_edit.setText(cfg["url"])
        docker.token_edit.setText(cfg["token"])
        docker._reconnect()
        yield from wait(lambda: ctl.tasks)
        check(
            "connected_tasks_listed",
            docker.task_box.count() >= 1 and "local_edit" in ctl.tasks,
            docker.connection.text(),
        )
        docker.task_box.setCurrentIndex(docker.task_box.findData("local_edit"))
        docker.prompt.setPlainText("make it green")
        docker.seed_random.setChecked(False)
        docker.seed_spin.setValue(5)
        docker.steps_spin.setValue(2)
        doc = new_doc("gui-a")
        yield
        # Until the new view is the active one and the action is enabled (up to 5 s): Krita 6 under load took
        # longer than one turn, and a disabled action's trigger() does nothing.
        yield from wait(
            lambda: (
                app.activeDocument() is not None
                and app.activeDocument().name() == "gui-a"
                and app.action("ace_bridge_generate").isEnabled()
            ),
            5,
        )
        before = [node_id(n) for n in doc.rootNode().childNodes()]
        app.action("ace_bridge_generate").trigger()  # the action behind Ctrl+Enter
        lid = docker.current
        why = docker.status.text()
        if lid is None:  # say why: the same call as the action's, outside Qt's slot machinery
            act = app.action("ace_bridge_generate")
            try:
                why = (
                    f"action did nothing (enabled {act.isEnabled()}, visible {act.isVisible()}, "
                    f"windows {len(app.windows())}); on_generate() -> "
                    f"{docker.on_generate()!r}, status {docker.status.text()!r}"
                )
            except Exception:
                why = "action did nothing; on_generate() raised " + traceback.format_exc()[-1500:]
        check("generate_started", lid is not None, why)
        yield from wait(lambda: lid in state["finished"])
        check("generate_done", state["finished"].get(lid) == "done", (state["finished"], docker.status.text()))
        kids = doc.rootNode().childNodes()
        new = [n for n in kids if node_id(n) not in before]
        check(
            "generate_new_layer_on_top",
            len(new) == 1
            and node_id(kids[-1]) == node_id(new[0])
            and "local_edit" in new[0].name()
            and "seed 5" in new[0].name(),
            [n.name() for n in kids],
        )
        QTimer.singleShot(0, lambda: None)
        yield
        shot = cfg.get("screenshot")
        if shot:
            check("screenshot_saved", docker.grab().save(shot, "PNG"), shot)
            win = app.activeWindow().qwindow()
            win.grab().save(shot.replace(".png", "-window.png"), "PNG")

        # Undo: how many undo steps remove the inserted layer?
        n_before_undo = len(doc.rootNode().childNodes())
        undo_steps = 0
        for _ in range(4):
            yield from harness.undo_once(doc)
            undo_steps += 1
            ids_now = [node_id(n) for n in doc.rootNode().childNodes()]
            if new and node_id(new[0]) not in ids_now:
                break
        gone = bool(new) and node_id(new[0]) not in [node_id(n) for n in doc.rootNode().childNodes()]
        check(
            "undo_removes_layer",
            gone,
            f"undo steps {undo_steps}, layers {n_before_undo} -> {len(doc.rootNode().childNodes())}",
        )
        harness.checks["undo_steps"] = [True, str(undo_steps if gone else -1)]
        yield from harness.ticks(5)

        # A result lands in its own document even when the user switched documents meanwhile.
        before_a = [node_id(n) for n in doc.rootNode().childNodes()]
        lid2 = docker.on_generate()
        other = new_doc("gui-b")
        before_b = [node_id(n) for n in other.rootNode().childNodes()]
        yield from wait(lambda: lid2 in state["finished"])
        added_a = [n for n in doc.rootNode().childNodes() if node_id(n) not in before_a]
        added_b = [n for n in other.rootNode().childNodes() if node_id(n) not in before_b]
        check(
            "result_lands_in_origin_document",
            state["finished"].get(lid2) == "done"
            and len(added_a) == 1
            and not added_b
            and app.activeDocument().name() == "gui-b",
            (state["finished"].get(lid2), len(added_a), len(added_b)),
        )

        # Several images arrive as one group (first visible, others hidden), removed by one undo.
        docker.count_spin.setValue(2)
        before_g = [node_id(n) for n in other.rootNode().childNodes()]
        lid4 = docker.on_generate()
        yield from wait(lambda: lid4 in state["finished"])
        docker.count_spin.setValue(1)
        top = other.rootNode().childNodes()[-1]
        kids = list(reversed(top.childNodes()))  # top child first
        check(
            "count2_group_first_visible",
            state["finished"].get(lid4) == "done"
            and top.type() == "grouplayer"
            and len(kids) == 2
            and kids[0].visible()
            and not kids[1].visible(),
            (state["finished"].get(lid4), top.type(), [(k.name(), k.visible()) for k in kids]),
        )
        yield from harness.undo_once(other)
        check(
            "count2_group_one_undo",
            [node_id(n) for n in other.rootNode().childNodes()] == before_g,
            [n.name() for n in other.rootNode().childNodes()],
        )

        # Cancel during a job leaves no layer.
        docker.steps_spin.setValue(100)
        before_c = [node_id(n) for n in other.rootNode().childNodes()]
        lid3 = docker.on_generate()
        yield from wait(
            lambda: ctl.history and ctl.history[0].state in ("queued", "running") or lid3 in state["finished"]
        )
        docker.on_cancel()
        yield from wait(lambda: lid3 in state["finished"])
        after_c = [node_id(n) for n in other.rootNode().childNodes()]
        check(
            "cancel_leaves_no_layer",
            state["finished"].get(lid3) == "cancelled" and after_c == before_c,
            (state["finished"].get(lid3), docker.status.text()),
        )
        check("history_has_thumbnails", docker.history.count() >= 2, docker.history.count())
        ctl.stop()

    harness.play(steps())


start_on_window("ACE_GUI_TEST", _run)
