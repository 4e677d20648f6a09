"""The embedded demo region: ``DemoConfig``, ``generate_demo``, ``load_demo``, ``demo_server``.

The code lives in :mod:`s2pipe.synthetic.demo`; this module keeps the documented ``s2pipe.demo`` names."""
from s2pipe.synthetic.demo import *  # noqa: F401,F403
from s2pipe.synthetic.demo import __all__  # noqa: F401
