"""An offline translation app (Kivy) on `edgeinfer.Translator`: `python -m edgeinfer_apps.translator`."""
