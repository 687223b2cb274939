"""Applications built on edgeinfer (the offline translator lives in `edgeinfer_apps.translator`)."""
