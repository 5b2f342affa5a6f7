"""Test-only Krita plugin (issue 15): when env ACE_IMPORT_TEST names a config file, drive in the real GUI either

- phase "import": Krita's own Tools > Scripts > "Import Python Plugin from Web…" (the URL of the zip, served by
  the test on 127.0.0.1) and then "…from File…" (the same zip: Krita asks to overwrite), through Krita's
  plugin_importer extension and its actions, with only its dialogs answered here; then quit through File > Quit
  so Krita writes the `enable_ace_bridge` setting the importer made;
- phase "first_run": after that restart, the ACE++ docker (loaded from the imported files) with no daemon
  running: "Start ACE Bridge", the model box, "Download" with its progress bar, then the task list.

Writes name -> [ok, detail] checks to the config's result file, then leaves (the shared runner_harness).
"""

import os
import sys

from .runner_harness import start_on_window


def _import_phase(harness):
    cfg, app, check = harness.cfg, harness.app, harness.check
    ext_mod = sys.modules.get("plugin_importer.plugin_importer_extension")
    check("krita_importer_loaded", ext_mod is not None, sorted(m for m in sys.modules if "plugin_importer" in m))
    if ext_mod is None:
        return
    real_box = ext_mod.QMessageBox
    asked, warnings = [], []

    class Box:
        StandardButton = real_box.StandardButton

        @staticmethod
        def question(parent, title, text, buttons):
            asked.append(title)
            return real_box.StandardButton.Yes

        @staticmethod
        def warning(parent, title, text):
            warnings.append(text)

    class Input:
        @staticmethod
        def getText(parent, title, text):  # noqa: N802 - Qt's name
            return (cfg["url"], True)

    class Files:
        @staticmethod
        def getOpenFileName(parent, title, folder, filters):  # noqa: N802 - Krita's name
            return cfg["zip"]

    ext_mod.QMessageBox, ext_mod.QInputDialog, ext_mod.FileDialog = Box, Input, Files
    resources = app.getAppDataLocation()
    pykrita = os.path.join(resources, "pykrita")
    check("not_installed_before", not os.path.exists(os.path.join(pykrita, "ace_bridge")), pykrita)

    app.action("plugin_importer_web").trigger()
    files = [
        os.path.join(pykrita, "ace_bridge", "__init__.py"),
        os.path.join(pykrita, "ace_bridge.desktop"),
        os.path.join(resources, "actions", "ace_bridge.action"),
        os.path.join(pykrita, "ace_bridge", "_vendor", "ace_protocol", "client.py"),
        os.path.join(pykrita, "ace_bridge", "ace-bridge-launcher.json"),
    ]
    check("web_import_no_error", not warnings, warnings)
    check("web_import_files", all(os.path.isfile(f) for f in files), [f for f in files if not os.path.isfile(f)])
    check("web_import_asked_to_activate", asked == ["Activate Plugins?"], asked)
    check(
        "web_import_enabled",
        app.readSetting("python", "enable_ace_bridge", "") == "true",
        app.readSetting("python", "enable_ace_bridge", ""),
    )
    asked.clear()
    os.remove(files[0].replace("__init__.py", "model.py"))  # the file import must bring it back

    app.action("plugin_importer_file").trigger()
    check("file_import_no_error", not warnings, warnings)
    check("file_import_overwrite_then_activate", asked == ["Overwrite Plugin", "Activate Plugins?"], asked)
    check(
        "file_import_files",
        all(os.path.isfile(f) for f in files) and os.path.isfile(files[0].replace("__init__.py", "model.py")),
        files[0],
    )
    harness.finish(quit_action=True)


def _first_run_phase(harness):
    import ace_bridge
    from ace_bridge.docker import AceBridgeDocker

    app, check, wait = harness.app, harness.check, harness.wait
    deadline = harness.cfg.get("timeout_s", 240)

    def shoot(name):
        folder = harness.cfg.get("screenshots")
        if folder:
            win = app.activeWindow().qwindow()
            check(f"screenshot_{name}", win.grab().save(os.path.join(folder, f"{name}.png"), "PNG"), name)

    pykrita = os.path.join(app.getAppDataLocation(), "pykrita")
    check(
        "plugin_loaded_from_import",
        os.path.dirname(os.path.dirname(ace_bridge.__file__)) == pykrita,
        ace_bridge.__file__,
    )
    docker = AceBridgeDocker.instances[-1] if AceBridgeDocker.instances else None
    check("docker_registered", docker is not None, len(AceBridgeDocker.instances))
    if docker is None:
        return
    docker.show()
    docker.setVisible(True)
    panel, worker = docker.first_run_panel, docker.controller.worker
    yield from wait(lambda: panel.start_button.isVisible(), deadline)
    check(
        "offers_start",
        panel.start_button.isVisible() and worker.state != "connected",
        (worker.state, panel.message.text()),
    )
    # Nothing answers yet: next to "Start ACE Bridge", the box to point at a daemon on another machine.
    check("connection_box_shown_while_no_daemon", docker.settings_box.isVisible(), docker.settings_box.isVisible())
    shoot("not-running")
    panel.start_button.click()
    yield from wait(lambda: worker.state == "connected" and panel.advice is not None, deadline)
    check(
        "started_and_connected",
        worker.state == "connected",
        (worker.state, panel.message.text(), panel.log.toPlainText()[-800:]),
    )
    check(
        "connection_box_hidden_for_local_daemon", not docker.settings_box.isVisible(), docker.settings_box.isVisible()
    )
    advice = panel.advice
    check(
        "model_missing_shown",
        advice is not None
        and advice.state == "missing"
        and panel.download_button.isVisible()
        and "GB" in panel.model_text.text()
        and "Non-Commercial" in panel.model_text.text(),
        panel.model_text.text()[:300],
    )
    check(
        "no_gpu_said_plainly",
        "no usable NVIDIA GPU" in panel.warning.text() and "--demo" in panel.warning.text(),
        panel.warning.text(),
    )
    check("no_tasks_before_download", docker.task_box.count() == 0, docker.task_box.count())
    yield from harness.ticks(40)
    shoot("first-run")
    panel.download_button.click()
    saw_progress = False
    for _ in range(int(deadline * 20)):
        a = panel.advice
        if a is not None and a.state == "downloading" and panel.progress.isVisible() and (a.fraction or 0) > 0.1:
            if not saw_progress:
                saw_progress = True
                yield from harness.ticks(6)
                shoot("downloading")
        if docker.task_box.count() > 0:
            break
        yield
    check("download_progress_shown", saw_progress, panel.advice.state if panel.advice else None)
    check(
        "tasks_after_download",
        docker.task_box.count() > 0 and "local_edit" in docker.controller.tasks,
        (docker.task_box.count(), panel.model_text.text()[:200]),
    )
    yield from harness.ticks(20)
    check("box_hidden_when_ready", not panel.isVisible(), panel.model_text.text()[:200])
    shoot("ready")
    docker.controller.stop()
    docker.first_run.stop()


def _run(harness):
    if harness.cfg["phase"] == "import":
        _import_phase(harness)
    else:
        harness.play(_first_run_phase(harness))


start_on_window("ACE_IMPORT_TEST", _run)
