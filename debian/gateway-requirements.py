"""Print the gateway's requirements (the core's and the gateway extra's) from pyproject.toml."""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["gateway"]))
