"""The editor-neutral core of the ACE Bridge plug-ins: what Krita and GIMP do alike, written once.

Job life cycle and event follower (jobs), parameter forms built from the task table (forms), layer names and
prompt templates (naming), provenance records (provenance), job history (history) and stored settings and
profile state (settings). Runs on Python 3.10 with nothing but `ace_protocol` and the standard library: no Qt,
no GIMP. The installer vendors it into each plug-in's private `_vendor` package next to `ace_protocol`.
"""
