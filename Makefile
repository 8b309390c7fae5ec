# Build, boot and test the hypervisor. `make help` lists the targets.
#
# Every target installs what it needs on a fresh Debian machine (apt packages, the rustup
# target) through the `deps` stamp, or says exactly what is missing.

SHELL      := /bin/bash
TARGET     := x86_64-unknown-none
PROFILE    ?= release
BUILD      := build
KERNEL     := target/$(TARGET)/$(PROFILE)/hypervisor
ISO        := $(BUILD)/hypervisor.iso

# QEMU knobs (all overridable): CPUs, memory, accelerator, extra flags, machine. With a
# GUEST, MEM follows its memory: GUESTS * GUEST_MEM, the image (its module stays reserved)
# and 64 MiB for the hypervisor (it takes about 6 MiB with 4 CPUs), at least 256 MiB.
SMP        ?= 4
MEM        ?= $(if $(GUEST),$(shell echo $$(( $(GUESTS) * $(GUEST_MEM) + $(GUEST_IMAGE_MIB) + 64 + $(DISK_RUN_MIB) > 256 ? $(GUESTS) * $(GUEST_MEM) + $(GUEST_IMAGE_MIB) + 64 + $(DISK_RUN_MIB) : 256 )))M,256M)
ACCEL      ?= tcg
MACHINE    ?= pc
QEMU_EXTRA ?=
BOOT       ?= pvh
CMDLINE    ?=
# Hypervisor cargo features, e.g. heap-trace (hypervisor/src/heaptrace.rs, tests/heaptrace.py).
HV_FEATURES ?=
TIMEOUT    ?= 120
# A Xen PV64 guest ELF to run by hand, as xl's config would: its memory in MiB (xl's
# `memory=`; 128 MiB is what XTF's tests and a small Linux ask for, and our own guests do
# not mind it), its vCPUs (xl's `vcpus=`; empty: the hypervisor's `vcpus=`, 1), its command
# line (xl's `cmdline=`), and how many domains to build from it.
GUEST      ?=
GUESTS     ?= 1
GUEST_MEM  ?= 128
GUEST_VCPUS ?=
GUEST_CMDLINE ?=
GUEST_IMAGE_MIB = $(shell echo $$(( ( $$(stat -c %s $(GUEST) 2>/dev/null || echo 0) + 1048575 ) / 1048576 )))
# The module line the guest's domains are built by (the same keys as a GRUB module line).
GUEST_LINE  = name=$(basename $(notdir $(GUEST))) mem=$(GUEST_MEM)$(if $(GUEST_VCPUS), vcpus=$(GUEST_VCPUS)) -- $(GUEST_CMDLINE)
# Virtual disks for a hand-run guest: `FILE[,ro]` words, its `xvda`, `xvdb`, ... in order.
# Domain 0 (guest-dom0, `attack=blk serve=1`) keeps each in its memory and serves it over
# Xen's blkif protocol (a store, consoles and blkback); the run boots from an ISO (GRUB
# module lines, as on a real host) and domain 0 gets room for the disks.
GUEST_DISK ?=
DISK_FILES  = $(foreach d,$(GUEST_DISK),$(firstword $(subst $(comma), ,$(d))))
DISK_MIB    = $(shell echo $$(( ( 0 $(foreach f,$(DISK_FILES),+ $$(stat -c %s $(f) 2>/dev/null || echo 0)) ) / 1048576 + $(words $(DISK_FILES)) )))
DISK_RUN_MIB = $(if $(GUEST_DISK),$(shell echo $$(( 2 * $(DISK_MIB) + 32 ))),0)
# A virtio disk for them: `GUEST_VDISK=FILE[,ro]` attaches FILE to QEMU as a virtio-blk
# device, which domain 0 drives and serves, one slice of it per guest (its last xvd).
GUEST_VDISK ?=
VDISK_FILE  = $(firstword $(subst $(comma), ,$(GUEST_VDISK)))
VDISK_RO    = $(if $(filter %$(comma)ro,$(GUEST_VDISK)),1)
VDISK_QEMU  = $(if $(GUEST_VDISK),-drive file=$(VDISK_FILE)$(comma)if=none$(comma)id=vd0$(comma)format=raw$(comma)cache=writeback$(if $(VDISK_RO),$(comma)readonly=on) -device virtio-blk-pci$(comma)drive=vd0$(comma)disable-legacy=on)
DOM0_DISK_LINE = name=dom0 mem=$(shell echo $$(( 16 + $(DISK_MIB) ))) -- attack=blk serve=1 good=$(GUESTS) guest_mem=$(GUEST_MEM)$(if $(GUEST_VDISK), vdisk=1$(if $(VDISK_RO), vdisk_ro=1)) -- $(GUEST_CMDLINE)
# The hypervisor's line for a hand run: the exit status says how the guest ended.
RUN_CMDLINE = $(strip $(CMDLINE) $(if $(GUEST),exit=guest guests=$(GUESTS)))
GUEST_CRATES := guest-hello guest-events guest-bench guest-balloon guest-pagetables guest-hostile guest-hostile2 guest-smpuser guest-dom0 guest-stress guest-vcpus guest-fpu guest-fuzz guest-segments guest-bigimage guest-shutdown guest-grants guest-m2p guest-vcpuop guest-xs guest-blk

# The stress run: domain 0 spawns N stress domains for SECONDS on SMP CPUs.
N          ?= 100
SECONDS    ?= 10
STRESS_SMP ?= $(if $(filter command line environment,$(origin SMP)),$(SMP),2)
STRESS_ARGS ?=
# Hypervisor command-line options for the stress run (`timer_slop_us=0`, `heap_mib=16`).
STRESS_HV_ARGS ?=
# report: a missed performance target is printed as MISS beside the host's noise figures and
# does not fail the run (a noisy host must not fail `make stress`); enforce: it does. What
# breaks a run (a domain failed, memory leaked, an early timer) fails it either way.
STRESS_TARGETS ?= report
# IO=1: every stress domain also gets a VBD of IO_KIB KiB (a RAM disk in domain 0's memory,
# served by domain 0 with the domain's store); domain 0 gets 8 MiB plus the disks.
IO ?=
IO_KIB ?= 1024
STRESS_IO_ARGS = $(if $(filter 1,$(IO)),io_kib=$(IO_KIB))
DOM0_IO_MIB = $(if $(filter 1,$(IO)),$(shell echo $$(( 8 + ($(N) * $(IO_KIB) + 1023) / 1024 ))))
STRESS_MEM ?= $(shell echo $$(( $(N) * 2 + 256 + $(or $(DOM0_IO_MIB),0) )))M
STRESS_ISO := $(BUILD)/stress.iso
STRESS_OUT ?= stress/out
STRESS_LOG ?= $(BUILD)/stress.log
# Capacity planning: `make stress` at every N of NS on every CPU count of SMPS, RUNS times
# each (default 1; not set here, since `make boottime` defaults it to 5), memory sized per N
# as `make stress` does, then one HTML page from every run in CAPACITY_OUT (those of
# earlier sweeps too: `make capacity-page` only redraws it).
NS         ?= 100 300 600 1000
SMPS       ?= 2
P99_US     ?= 1000
CAPACITY_OUT ?= $(BUILD)/capacity
# idle: QEMU's TCG vCPU threads run SCHED_IDLE, vCPU k pinned to host CPU k, so that QEMU's
# main loop (which delivers timer interrupts under TCG) never waits behind them; default:
# left as QEMU makes them.
STRESS_VCPU ?= idle

# The fuzz run and the containment cycles: domain 0 runs plan=fuzz or plan=cycles.
FUZZ_SECONDS = $(if $(filter command line environment,$(origin SECONDS)),$(SECONDS),60)
FUZZ_SMP   = $(if $(filter command line environment,$(origin SMP)),$(SMP),2)
SEED       ?= 1
CYCLES     ?= 1000
# Classes of calls the fuzzers leave out (guests/fuzz/src/options.rs): none, every hole of
# issue 15 is closed. Name some (e.g. FUZZ_AVOID=poll,vcpus) only to triage a branch that
# reopens one, and say so.
FUZZ_AVOID ?=
# Whether the heap and its domain records must be exactly as before (1) or are only reported
# (0, for triage). Free memory is checked either way.
FUZZ_HEAP  ?= 1
# Extra domain-0 options (fuzzers= life_ms= pairs= periodic= replay= heartbeat_ms= pin=)
# and hypervisor options.
FUZZ_ARGS  ?=
FUZZ_HV_ARGS ?=

QEMU       := qemu-system-x86_64
comma      := ,
QEMU_BASE   = -M $(MACHINE) -accel $(ACCEL) -m $(MEM) -smp $(SMP) -display none \
              -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
              $(if $(filter kvm%,$(ACCEL)),-cpu host$(comma)-arch-capabilities,-cpu max) $(QEMU_EXTRA)

CARGO_FLAGS := $(if $(filter release,$(PROFILE)),--release,)
# grub-xen-bin: GRUB's Xen PV image, the unmodified frontend (`make grub-image`); mtools and
# e2fsprogs (mke2fs -d) make its test disks without root.
APT_PKGS    := qemu-system-x86 grub-pc-bin grub-common xorriso mtools libxen-dev gcc grub-xen-bin e2fsprogs
DEPS_STAMP  := $(BUILD)/.deps

# Logic crates: built and tested on the host as well as for the machine (guest-dom0: its
# library, the plan and options; its binary runs on the machine only).
HOST_CRATES := xen-abi apic blkif builder bvt events grants guest-dom0 guest-rt mm pci protocol ptwr pvmm smp topology xenring xenstore
# Host programs (std): tested and linted on the host only.
STD_CRATES := stress
# Guest crates whose library (the logic) is tested and linted on the host too.
GUEST_LIB_CRATES := guest-fuzz
# Everything that runs on the machine.
METAL_CRATES := hypervisor guest-rt guest-hello guest-fuzz guest-dom0 guest-hostile guest-pagetables guest-bigimage guest-shutdown guest-xs guest-blk
ISO_SELFTEST := $(BUILD)/hypervisor-selftest.iso

.PHONY: grub-image help deps build guests stress capacity capacity-page fuzz cycles iso iso-selftest run smoke boottime test test-host test-qemu test-stress test-fuzz clippy clean xtf

help:
	@echo "make build           build the hypervisor ELF ($(KERNEL))"
	@echo "make iso             build the GRUB multiboot2 ISO ($(ISO))"
	@echo "make run             boot under QEMU (SMP=$(SMP) MEM=$(MEM) ACCEL=$(ACCEL) BOOT=pvh|iso CMDLINE= QEMU_EXTRA=)"
	@echo "make run GUEST=<elf> [GUEST_MEM=128] [GUEST_VCPUS=n] [GUEST_CMDLINE='...'] [GUESTS=n]"
	@echo "                     run a Xen PV64 guest by hand (n domains of it); the exit status says how it"
	@echo "                     ended: 33 poweroff, 37 reboot, 39 crash, 41 killed, 43 not built, 35 hypervisor failed"
	@echo "make guests          build the Rust PV guests (target/x86_64-unknown-none/release/guest-*)"
	@echo "make grub-image      GRUB's Xen PV image (grub-xen-bin) with a test config, and FAT/ext2 test disks ($(BUILD)/grub/)"
	@echo "make smoke           boot with selftest, check the summary, exit 0 on success (SMP= ACCEL= QEMU_EXTRA= BOOT=)"
	@echo "make boottime        QEMU start to 'all cores idle', median of 5, -smp 4 and 16 (RUNS= BOOT_SMP=)"
	@echo "make stress N=100    domain 0 spawns N domains on SMP=2 CPUs for SECONDS=10; report in $(STRESS_OUT)/"
	@echo "                     (STRESS_MEM=, STRESS_ARGS='hogs= latency= pairs= periodic= mem_kib= ...',"
	@echo "                      STRESS_HV_ARGS='timer_slop_us= heap_mib=' for the hypervisor,"
	@echo "                      STRESS_TARGETS=report|enforce (default report: a missed target is a MISS"
	@echo "                      beside the host's noise figures and fails nothing; enforce: it fails the run),"
	@echo "                      STRESS_VCPU=idle|default, IO=1 IO_KIB=1024: a VBD, store and console for every"
	@echo "                      domain served by domain 0); exits non-zero when a domain failed or memory leaked"
	@echo "make capacity        a sweep of stress runs (NS=\"$(NS)\" SMPS=\"$(SMPS)\" RUNS=$(or $(RUNS),1) SECONDS=$(SECONDS)), then"
	@echo "                     $(CAPACITY_OUT)/capacity.html: latency and memory against N, the largest N"
	@echo "                     whose warped p99 <= P99_US=$(P99_US); make capacity-page redraws it from the runs there"
	@echo "make fuzz            domain 0 keeps fuzzer domains (2 vCPUs each) beside good domains for SECONDS=60"
	@echo "                     on SMP=2 CPUs (SEED=1, FUZZ_AVOID='$(FUZZ_AVOID)', FUZZ_ARGS='fuzzers= life_ms= replay=',"
	@echo "                     FUZZ_HV_ARGS=); report: calls, calls/s, domains, longest stay, heartbeat, memory"
	@echo "make cycles          CYCLES=1000 create/destroy cycles of hostile and fuzzer domains; memory and heap exactly as before"
	@echo "make test            host unit tests, clippy, the QEMU test matrix, a short stress run, a short fuzz run and cycles"
	@echo "make test-stress     make stress N=20 SMP=2 SECONDS=3, then with IO=1; targets reported but not enforced"
	@echo "make xtf XTF=<dir>   run every pv64 test of a built Xen Test Framework tree (ONLY='a b', XTF_TIMEOUT=60)"
	@echo "make clippy          the image's import circles (tests/imports.py), clippy with warnings denied, host and bare-metal"
	@echo "make clean           remove build outputs"

# ---- set-up -------------------------------------------------------------------------------

# Checked again when the Makefile changes (a package added to APT_PKGS gets installed).
$(DEPS_STAMP): Makefile
	@mkdir -p $(BUILD)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	    || { echo "error: could not install:$$missing (apt-get install them by hand)"; exit 1; }; \
	fi
	@command -v rustup >/dev/null || { echo "error: rustup is missing: install Rust from rustup.rs"; exit 1; }
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)
	@touch $@

deps: $(DEPS_STAMP)

# ---- build --------------------------------------------------------------------------------

build: $(DEPS_STAMP)
	cargo build -p hypervisor --target $(TARGET) $(CARGO_FLAGS) $(if $(HV_FEATURES),--features $(HV_FEATURES))

guests: $(DEPS_STAMP)
	cargo build $(foreach c,$(GUEST_CRATES),-p $(c)) --target $(TARGET) --release

# $(call make-iso,output,command line[,guest ELF,its module line])
define make-iso
	@rm -rf $(BUILD)/iso && mkdir -p $(BUILD)/iso/boot/grub
	cp $(KERNEL) $(BUILD)/iso/boot/hypervisor
	$(if $(3),cp $(3) $(BUILD)/iso/boot/guest)
	printf 'set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nmenuentry "hypervisor" {\n  multiboot2 /boot/hypervisor $(2)\n$(if $(3),  module2 /boot/guest $(4)\n)  boot\n}\n' > $(BUILD)/iso/boot/grub/grub.cfg
	grub-file --is-x86-multiboot2 $(BUILD)/iso/boot/hypervisor || { echo "error: not a multiboot2 image"; exit 1; }
	grub-mkrescue -o $(1) $(BUILD)/iso 2>/dev/null
endef

iso: build
	$(call make-iso,$(ISO),$(if $(GUEST),$(RUN_CMDLINE),$(CMDLINE)),$(GUEST),$(GUEST_LINE))

iso-selftest: build
	$(call make-iso,$(ISO_SELFTEST),selftest)

# GRUB's Xen PV image with its test configuration embedded, and its test disks (FAT and ext2,
# one known file each): tests/grubimage.py says what the configuration does.
GRUB_DIR := $(BUILD)/grub
grub-image: $(DEPS_STAMP)
	python3 tests/grubimage.py image $(GRUB_DIR)/grub-xen.elf
	python3 tests/grubimage.py disk $(GRUB_DIR)/disk-fat.img --fs fat
	python3 tests/grubimage.py disk $(GRUB_DIR)/disk-ext2.img --fs ext2

# ---- boot ---------------------------------------------------------------------------------

# What QEMU's exit status says of a hand-run guest (README, "Running a guest by hand").
define exit-meaning
case $$status in 33) m="the guest powered off";; 35) m="the hypervisor failed (a panic, a failed check, leaked memory)";; \
  37) m="the guest rebooted";; 39) m="the guest crashed";; 41) m="the hypervisor killed the guest";; \
  43) m="no guest could be built (the log says why)";; *) m="QEMU ended otherwise (killed, or its own error)";; esac; \
echo "run: QEMU exit status $$status: $$m"
endef

ifneq ($(GUEST_DISK)$(GUEST_VDISK),)
# A guest with disks: domain 0 (module 0) creates it from module 1 and serves the disks
# (modules 2 on, `disk=xvdX[,ro]`). The status is the run's (33: every domain ended as
# expected, domain 0 last).
run: build guests
	@test -f "$(GUEST)" || { echo "error: GUEST_DISK and GUEST_VDISK need GUEST=<a Xen PV64 ELF>"; exit 2; }
	@for f in $(DISK_FILES) $(VDISK_FILE); do test -f $$f || { echo "error: no disk image $$f"; exit 2; }; done
	@rm -rf $(BUILD)/iso && mkdir -p $(BUILD)/iso/boot/grub
	@cp $(KERNEL) $(BUILD)/iso/boot/hypervisor && cp target/$(TARGET)/release/guest-dom0 $(BUILD)/iso/boot/dom0 && cp $(GUEST) $(BUILD)/iso/boot/guest
	@{ printf 'set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n'; \
	  printf 'menuentry "hypervisor" {\n  multiboot2 /boot/hypervisor dom0 %s\n' "$(CMDLINE)"; \
	  printf '  module2 /boot/dom0 %s\n  module2 /boot/guest %s\n' "$(DOM0_DISK_LINE)" "$(GUEST_LINE)"; \
	  i=0; for d in $(GUEST_DISK); do cp $${d%%,*} $(BUILD)/iso/boot/disk$$i; \
	    l=$$(echo abcdefghijklmnop | cut -c$$((i + 1))); ro=; case $$d in *,ro) ro=,ro;; esac; \
	    printf '  module2 /boot/disk%d name=disk%d disk=xvd%s%s\n' $$i $$i $$l $$ro; i=$$((i + 1)); done; \
	  printf '  boot\n}\n'; } > $(BUILD)/iso/boot/grub/grub.cfg
	@grub-mkrescue -o $(ISO) $(BUILD)/iso 2>/dev/null
	@status=0; $(QEMU) $(QEMU_BASE) -cdrom $(ISO) $(VDISK_QEMU) || status=$$?; echo "run: QEMU exit status $$status (33: every domain ended as expected)"; exit $$status
else ifeq ($(BOOT),iso)
run: iso
	@status=0; $(QEMU) $(QEMU_BASE) -cdrom $(ISO) || status=$$?; $(if $(GUEST),$(exit-meaning);) exit $$status
else
# PVH's -initrd module carries no line of its own: the hypervisor takes it from after `--`.
run: build
	@test -z "$(GUEST)" -o -f "$(GUEST)" || { echo "error: no guest image $(GUEST)"; exit 2; }
	@status=0; $(QEMU) $(QEMU_BASE) -kernel $(KERNEL) -append "$(RUN_CMDLINE)$(if $(GUEST), -- $(GUEST_LINE))" \
	    $(if $(GUEST),-initrd $(GUEST)) || status=$$?; $(if $(GUEST),$(exit-meaning);) exit $$status
endif

smoke: $(if $(filter iso,$(BOOT)),iso-selftest,build)
	@SMP=$(SMP) ACCEL=$(ACCEL) QEMU_EXTRA="$(QEMU_EXTRA)" MEM=$(MEM) BOOT=$(BOOT) python3 tests/qemu.py smoke

boottime: build
	ACCEL=$(ACCEL) python3 tests/qemu.py boottime --runs $(or $(RUNS),5) --smp $(or $(BOOT_SMP),4 16)

# ---- tests --------------------------------------------------------------------------------

test: test-host clippy test-qemu test-stress test-fuzz

# The property tests (proptest) run their default case counts; more with, for example,
# `PROPTEST_CASES=10000 make test-host`.
test-host: $(DEPS_STAMP)
	cargo test $(foreach c,$(HOST_CRATES) $(STD_CRATES),-p $(c)) -p hypervisor --lib
	cargo test $(foreach c,$(GUEST_LIB_CRATES),-p $(c)) --lib

clippy: $(DEPS_STAMP)
	python3 tests/imports.py --selftest
	python3 tests/imports.py
	cargo clippy $(foreach c,$(HOST_CRATES),-p $(c)) --lib --tests -- -D warnings
	cargo clippy $(foreach c,$(STD_CRATES),-p $(c)) --all-targets -- -D warnings
	cargo clippy -p hypervisor --lib --tests -- -D warnings
	cargo clippy $(foreach c,$(GUEST_LIB_CRATES),-p $(c)) --lib --tests -- -D warnings
	cargo clippy $(foreach c,$(sort $(HOST_CRATES) $(METAL_CRATES)),-p $(c)) --target $(TARGET) -- -D warnings

test-qemu: build iso-selftest guests
	python3 tests/qemu.py test

# A short stress run (20 domains, 2 CPUs, 3 s): every domain must run, balloon, report and be
# destroyed with nothing leaked, and with 4 latency domains on 2 CPUs warped vCPUs must be
# pushed between CPUs; the performance targets are reported, not enforced (they are for
# `make stress N=100`, on a quiet machine). Then the same with IO=1: every domain's VBD
# reads answered (none lost, failed or foreign) and every record relayed through domain 0's
# console service (none missing, no line dropped).
test-stress:
	$(MAKE) --no-print-directory stress N=20 SMP=2 SECONDS=3 STRESS_TARGETS=report STRESS_OUT=$(BUILD)/stress-test STRESS_ARGS=latency=4
	$(MAKE) --no-print-directory stress N=20 SMP=2 SECONDS=3 IO=1 STRESS_TARGETS=report STRESS_OUT=$(BUILD)/stress-test-io STRESS_LOG=$(BUILD)/stress-io.log

# A short fuzz run (15 s) and 60 containment cycles: the hypervisor must not crash or hang,
# the good domains must run through, and memory and heap must come back exactly.
test-fuzz:
	$(MAKE) --no-print-directory fuzz SECONDS=15
	$(MAKE) --no-print-directory cycles CYCLES=60

# ---- fuzzing ------------------------------------------------------------------------------

fuzz: build guests
	python3 tests/fuzz.py fuzz --seconds $(FUZZ_SECONDS) --seed $(SEED) --smp $(FUZZ_SMP) \
	    --args "$(if $(FUZZ_AVOID),avoid=$(FUZZ_AVOID)) heap=$(FUZZ_HEAP) $(FUZZ_ARGS)" --hv-args "$(FUZZ_HV_ARGS)"

cycles: build guests
	python3 tests/fuzz.py cycles --cycles $(CYCLES) --seed $(SEED) --smp $(FUZZ_SMP) \
	    --args "$(if $(FUZZ_AVOID),avoid=$(FUZZ_AVOID)) heap=$(FUZZ_HEAP) $(FUZZ_ARGS)" --hv-args "$(FUZZ_HV_ARGS)"

# ---- the stress suite ---------------------------------------------------------------------

stress: build guests $(DEPS_STAMP)
	cargo build -p stress --release
	@rm -rf $(BUILD)/stress-iso && mkdir -p $(BUILD)/stress-iso/boot/grub
	cp $(KERNEL) $(BUILD)/stress-iso/boot/hypervisor
	cp target/$(TARGET)/release/guest-dom0 target/$(TARGET)/release/guest-stress $(BUILD)/stress-iso/boot/
	printf 'set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nmenuentry "stress" {\n  multiboot2 /boot/hypervisor dom0 $(STRESS_HV_ARGS)\n  module2 /boot/guest-dom0 $(if $(DOM0_IO_MIB),mem=$(DOM0_IO_MIB) --) n=$(N) seconds=$(SECONDS) $(STRESS_IO_ARGS) $(STRESS_ARGS)\n  module2 /boot/guest-stress\n  boot\n}\n' > $(BUILD)/stress-iso/boot/grub/grub.cfg
	grub-mkrescue -o $(STRESS_ISO) $(BUILD)/stress-iso 2>/dev/null
	target/release/stress run --log $(STRESS_LOG) --out $(STRESS_OUT) --targets $(STRESS_TARGETS) --timeout $$(( $(SECONDS) * 10 + 120 )) \
	    --vcpu-threads $(STRESS_VCPU) \
	    --qemu "$(QEMU) -M $(MACHINE) -accel $(ACCEL) -m $(STRESS_MEM) -smp $(STRESS_SMP) -name stress,debug-threads=on -display none -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -mem-prealloc $(if $(filter kvm%,$(ACCEL)),-cpu host$(comma)-arch-capabilities,-cpu max) $(QEMU_EXTRA) -cdrom $(STRESS_ISO)"

# The Xen Test Framework's pv64 tests (not vendored: build andyhhp/xtf with `make -k -j2`).
xtf: build guests $(DEPS_STAMP)
	@test -n "$(XTF)" || { echo "error: say where a built XTF tree is: make xtf XTF=<dir>"; exit 2; }
	python3 tests/xtf.py --xtf $(XTF) --timeout $(or $(XTF_TIMEOUT),60) $(if $(ONLY),--only $(ONLY))

capacity: build guests $(DEPS_STAMP)
	@mkdir -p $(CAPACITY_OUT)
	@for smp in $(SMPS); do for n in $(NS); do for run in $$(seq 1 $(or $(RUNS),1)); do \
	  dir=$(CAPACITY_OUT)/n$$n-smp$$smp-run$$run; \
	  echo "capacity: N=$$n SMP=$$smp run $$run of $(or $(RUNS),1), report in $$dir"; \
	  $(MAKE) --no-print-directory stress N=$$n SMP=$$smp STRESS_TARGETS=report STRESS_OUT=$$dir STRESS_LOG=$$dir/serial.log \
	    || echo "capacity: N=$$n SMP=$$smp run $$run failed; the page shows what it measured"; \
	done; done; done
	@$(MAKE) --no-print-directory capacity-page

capacity-page:
	cargo build -p stress --release
	@reports=$$(ls $(CAPACITY_OUT)/*/report.json 2>/dev/null); \
	if [ -z "$$reports" ]; then echo "error: no runs in $(CAPACITY_OUT) (make capacity makes them)"; exit 1; fi; \
	target/release/stress capacity $$reports $(if $(P99_US),--p99-us $(P99_US)) --out $(CAPACITY_OUT)/capacity.html

clean:
	cargo clean
	rm -rf $(BUILD)
