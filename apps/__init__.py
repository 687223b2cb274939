"""Applications built on edgeinfer (the offline translator lives in `apps.translator`)."""
