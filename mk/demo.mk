# zkv: `make demo` boots a zkv guest against a local gateway; you approve the PIN it shows
# with the printed `zkv-gateway approve ID PIN` in another terminal. Root, QEMU, minutes.
# `make demo DEMO_ARGS=--auto-approve` needs nobody (CI smoke); DEMO_ARGS=--flavour=dracut too.
DEMO_ARGS ?=

.PHONY: demo
demo:
	$(MAKE) deps pyz
	$(VPY) -m tests.vm.demo $(DEMO_ARGS)
