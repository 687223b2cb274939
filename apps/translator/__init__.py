"""An offline translation app (Kivy) on `edgeinfer.Translator`: `python -m apps.translator`."""
