"""publish_data on an engine, as ipyparallel's ``ipyparallel.datapub.publish_data``:

    from pcluster.datapub import publish_data
    publish_data({"step": i, "loss": loss})      # in code running on an engine

Each call updates the dict the running request publishes; the client reads it as ``ar.data``
(per engine). It travels with the request's reply (ipyparallel sends it while the request
runs), within PCLUSTER_MAX_REPLY_RICH bytes; the values must pickle.
"""


def publish_data(data):
    """Publishes the keys of `data` (a dict) for the running request: ar.data on the client."""
    from . import _rich, engine

    if engine.engine_id is None:
        raise RuntimeError("publish_data works in code running on an engine (it fills ar.data of that request)")
    if not isinstance(data, dict):
        raise TypeError(f"publish_data takes a dict, not {type(data).__name__}")
    _rich.data.update(data)
