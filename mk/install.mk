# zkv: `make install` / `make uninstall` on a Debian or Ubuntu host (run as root).
#
# DESTDIR stages the whole tree (packaging, test images). PREFIX places the `zkv` command
# ($(PREFIX)/sbin/zkv); everything dracut, initramfs-tools and systemd read lives where they
# look for it, whatever PREFIX says. The keystore (/boot/zkv) and an existing
# /etc/zkv/early.conf are never touched. Rebuild the initramfs afterwards.

PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
ZKV_LIBDIR := /usr/lib/zkv
ZKV_SBINDIR = $(PREFIX)/sbin
ZKV_UNITDIR := /usr/lib/systemd/system
ZKV_DRACUTDIR := /usr/lib/dracut/modules.d/50zkv
ZKV_DRACUTCONF := /usr/lib/dracut/dracut.conf.d/50-zkv.conf
ZKV_ITDIR := /usr/share/initramfs-tools
ZKV_MANDIR := /usr/share/man
ZKV_PYZ ?= dist/zkv-early.pyz
# The folder that holds the Python packages (the e2e images pin an older one for the real root).
ZKV_PYTHON_SRC ?= .
ZKV_PYTHON_PACKAGES := zkv zkv_admin zkv_early

define ZKV_REMINDER
@echo
@echo "zkv: now rebuild the initramfs so it carries the boot client:"
@echo "      update-initramfs -u -k all      # initramfs-tools (Debian, Ubuntu)"
@echo "      dracut --force --regenerate-all # dracut"
@echo "    (zkv is left out of the image until 'zkv init' and 'zkv enroll' have run)"
endef

# $(call ZKV_WRAPPER,MODULE,TARGET): a script that runs MODULE from $(ZKV_LIBDIR)/python.
define ZKV_WRAPPER
printf '%s\n' '#!/usr/bin/python3 -I' '# zkv (installed by make install): runs $(1).' \
	'import runpy, sys' 'sys.path.insert(0, "$(ZKV_LIBDIR)/python")' \
	'runpy.run_module("$(1)", run_name="__main__", alter_sys=True)' > $(2)
chmod 0755 $(2)
endef

.PHONY: install install-files uninstall

install: pyz install-files

# Everything but building the zipapp (the test images call this with a ready $(ZKV_PYZ)).
install-files:
	@test -f $(ZKV_PYZ) || { echo "zkv: $(ZKV_PYZ) is missing: run make pyz" >&2; exit 1; }
	install -d -m 0755 $(DESTDIR)$(ZKV_LIBDIR) $(DESTDIR)$(ZKV_LIBDIR)/python \
		$(DESTDIR)$(ZKV_SBINDIR) $(DESTDIR)$(ZKV_UNITDIR) \
		$(DESTDIR)$(ZKV_UNITDIR)/zfs-load-key@.service.d \
		$(DESTDIR)$(ZKV_UNITDIR)/systemd-cryptsetup@.service.d \
		$(DESTDIR)/etc/systemd/system/zfs-mount.service.wants \
		$(DESTDIR)/etc/systemd/system/zfs-import.target.wants \
		$(DESTDIR)/etc/systemd/system/timers.target.wants \
		$(DESTDIR)$(ZKV_DRACUTDIR) $(DESTDIR)$(dir $(ZKV_DRACUTCONF)) $(DESTDIR)$(ZKV_ITDIR)/hooks \
		$(DESTDIR)$(ZKV_ITDIR)/conf-hooks.d $(DESTDIR)$(ZKV_ITDIR)/scripts/local-top \
		$(DESTDIR)$(ZKV_ITDIR)/scripts/local-bottom \
		$(DESTDIR)/etc/zfs/initramfs-tools-load-key.d \
		$(DESTDIR)$(ZKV_MANDIR)/man5 $(DESTDIR)$(ZKV_MANDIR)/man8
	install -d -m 0700 $(DESTDIR)/etc/zkv
	# The boot client, and the shell helpers both flavours source with the paths in front
	# (from zkv/paths.py: the one owner of every zkv location).
	install -m 0644 $(ZKV_PYZ) $(DESTDIR)$(ZKV_LIBDIR)/zkv-early.pyz
	$(PYTHON) -m zkv.paths zkv_early/zkv-lib.sh > $(DESTDIR)$(ZKV_LIBDIR)/zkv-lib.sh
	chmod 0644 $(DESTDIR)$(ZKV_LIBDIR)/zkv-lib.sh
	# The Python packages beside the zipapp, run by wrappers (no pip, no venv): the admin CLI
	# and the build-time helper both hooks use.
	for pkg in $(ZKV_PYTHON_PACKAGES); do \
		rm -rf $(DESTDIR)$(ZKV_LIBDIR)/python/$$pkg && \
		cp -r $(ZKV_PYTHON_SRC)/$$pkg $(DESTDIR)$(ZKV_LIBDIR)/python/$$pkg || exit 1; \
	done
	find $(DESTDIR)$(ZKV_LIBDIR)/python -name __pycache__ -prune -exec rm -rf {} +
	$(call ZKV_WRAPPER,zkv_admin,$(DESTDIR)$(ZKV_SBINDIR)/zkv)
	$(call ZKV_WRAPPER,zkv_early.initramfs_files,$(DESTDIR)$(ZKV_LIBDIR)/initramfs-files)
	# dracut module.
	install -m 0755 dracut/50zkv/module-setup.sh $(DESTDIR)$(ZKV_DRACUTDIR)/module-setup.sh
	install -m 0755 dracut/50zkv/zkv-early.sh dracut/50zkv/zkv-wait-devices.sh \
		$(DESTDIR)$(ZKV_DRACUTDIR)/
	install -m 0644 dracut/50zkv/zkv-load-key.sh dracut/50zkv/zkv-cleanup.sh \
		dracut/50zkv/zkv-early.service dracut/50zkv/zkv-wait-devices.service \
		$(DESTDIR)$(ZKV_DRACUTDIR)/
	install -m 0644 dracut/zkv.conf $(DESTDIR)$(ZKV_DRACUTCONF)
	# initramfs-tools hook, boot scripts and the OpenZFS >= 2.2 load-key drop-in.
	install -m 0755 initramfs-tools/hooks/zkv $(DESTDIR)$(ZKV_ITDIR)/hooks/zkv
	install -m 0644 initramfs-tools/conf-hooks.d/zkv $(DESTDIR)$(ZKV_ITDIR)/conf-hooks.d/zkv
	install -m 0644 initramfs-tools/scripts/zkv-functions $(DESTDIR)$(ZKV_ITDIR)/scripts/zkv-functions
	install -m 0755 initramfs-tools/scripts/local-top/zkv $(DESTDIR)$(ZKV_ITDIR)/scripts/local-top/zkv
	install -m 0755 initramfs-tools/scripts/local-bottom/zkv \
		$(DESTDIR)$(ZKV_ITDIR)/scripts/local-bottom/zkv
	install -m 0644 initramfs-tools/zfs-load-key.d/zkv \
		$(DESTDIR)/etc/zfs/initramfs-tools-load-key.d/zkv
	# Real root: the handed-over data-pool keys, enabled by its WantedBy= link.
	install -m 0644 systemd/zkv-load-keys.service $(DESTDIR)$(ZKV_UNITDIR)/zkv-load-keys.service
	install -m 0644 systemd/zfs-load-key@.service.d/50-zkv.conf \
		$(DESTDIR)$(ZKV_UNITDIR)/zfs-load-key@.service.d/50-zkv.conf
	ln -sf $(ZKV_UNITDIR)/zkv-load-keys.service \
		$(DESTDIR)/etc/systemd/system/zfs-mount.service.wants/zkv-load-keys.service
	# Real root: the handed-over LUKS devices and loop files, opened before the pool import;
	# the stock cryptsetup units wait for zkv's open (initrd and real root).
	install -m 0644 systemd/zkv-open-devices.service \
		$(DESTDIR)$(ZKV_UNITDIR)/zkv-open-devices.service
	install -m 0644 systemd/systemd-cryptsetup@.service.d/50-zkv.conf \
		$(DESTDIR)$(ZKV_UNITDIR)/systemd-cryptsetup@.service.d/50-zkv.conf
	ln -sf $(ZKV_UNITDIR)/zkv-open-devices.service \
		$(DESTDIR)/etc/systemd/system/zfs-import.target.wants/zkv-open-devices.service
	# Real root: the heartbeat (dead-man switch, remote wipe), enabled; it runs only once
	# the host key exists (zkv enroll).
	sed 's|@ZKV_SBINDIR@|$(ZKV_SBINDIR)|' systemd/zkv-heartbeat.service \
		> $(DESTDIR)$(ZKV_UNITDIR)/zkv-heartbeat.service
	chmod 0644 $(DESTDIR)$(ZKV_UNITDIR)/zkv-heartbeat.service
	install -m 0644 systemd/zkv-heartbeat.timer $(DESTDIR)$(ZKV_UNITDIR)/zkv-heartbeat.timer
	ln -sf $(ZKV_UNITDIR)/zkv-heartbeat.timer \
		$(DESTDIR)/etc/systemd/system/timers.target.wants/zkv-heartbeat.timer
	# Man pages (generated into man/ by `make man`; committed, so no build step here).
	install -m 0644 man/zkv.8 man/zkv-early.8 man/zkv-gateway.8 $(DESTDIR)$(ZKV_MANDIR)/man8/
	install -m 0644 man/zkv-early.conf.5 $(DESTDIR)$(ZKV_MANDIR)/man5/
	# Settings: an example the first time, never over the admin's file.
	test -e $(DESTDIR)/etc/zkv/early.conf || install -m 0644 zkv_early/early.conf.example \
		$(DESTDIR)/etc/zkv/early.conf
	$(ZKV_REMINDER)

uninstall:
	rm -f $(DESTDIR)$(ZKV_SBINDIR)/zkv
	rm -rf $(DESTDIR)$(ZKV_LIBDIR) $(DESTDIR)$(ZKV_DRACUTDIR)
	rm -f $(DESTDIR)$(ZKV_DRACUTCONF)
	rm -f $(DESTDIR)$(ZKV_ITDIR)/hooks/zkv $(DESTDIR)$(ZKV_ITDIR)/conf-hooks.d/zkv \
		$(DESTDIR)$(ZKV_ITDIR)/scripts/zkv-functions \
		$(DESTDIR)$(ZKV_ITDIR)/scripts/local-top/zkv \
		$(DESTDIR)$(ZKV_ITDIR)/scripts/local-bottom/zkv \
		$(DESTDIR)/etc/zfs/initramfs-tools-load-key.d/zkv
	rm -f $(DESTDIR)/etc/systemd/system/zfs-mount.service.wants/zkv-load-keys.service \
		$(DESTDIR)$(ZKV_UNITDIR)/zkv-load-keys.service \
		$(DESTDIR)/etc/systemd/system/zfs-import.target.wants/zkv-open-devices.service \
		$(DESTDIR)$(ZKV_UNITDIR)/zkv-open-devices.service \
		$(DESTDIR)$(ZKV_UNITDIR)/systemd-cryptsetup@.service.d/50-zkv.conf \
		$(DESTDIR)/etc/systemd/system/timers.target.wants/zkv-heartbeat.timer \
		$(DESTDIR)$(ZKV_UNITDIR)/zkv-heartbeat.service $(DESTDIR)$(ZKV_UNITDIR)/zkv-heartbeat.timer \
		$(DESTDIR)$(ZKV_UNITDIR)/zfs-load-key@.service.d/50-zkv.conf
	-rmdir $(DESTDIR)$(ZKV_UNITDIR)/zfs-load-key@.service.d 2>/dev/null
	-rmdir $(DESTDIR)$(ZKV_UNITDIR)/systemd-cryptsetup@.service.d 2>/dev/null
	rm -f $(DESTDIR)$(ZKV_MANDIR)/man8/zkv.8 $(DESTDIR)$(ZKV_MANDIR)/man8/zkv-early.8 \
		$(DESTDIR)$(ZKV_MANDIR)/man8/zkv-gateway.8 $(DESTDIR)$(ZKV_MANDIR)/man5/zkv-early.conf.5
	@echo "zkv: kept /etc/zkv (settings) and /boot/zkv (keystore, host key); remove them by hand"
	$(ZKV_REMINDER)
