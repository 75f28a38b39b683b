# zkv: `make deb` builds dist/zkv_<version>_all.deb and dist/zkv-gateway_<version>_<arch>.deb
# (debian/; needs debhelper, and PyPI for the gateway's venv). A copy of the tracked files is
# built in build/deb, so dpkg-buildpackage's output next to the source stays out of the tree.

ZKV_DEB_WORK := build/deb
ZKV_DEB_SRC := $(ZKV_DEB_WORK)/zkv

.PHONY: deb

deb:
	rm -rf $(ZKV_DEB_WORK) && mkdir -p $(ZKV_DEB_SRC) dist
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(ZKV_DEB_SRC)
	cd $(ZKV_DEB_SRC) && dpkg-buildpackage -b -us -uc
	cp $(ZKV_DEB_WORK)/*.deb dist/
	@ls dist/*.deb
