# Build image for `cross` (see Cross.toml): Debian bookworm with the cross C toolchain and the
# target architecture's GStreamer development packages installed through multiarch.
# Only the foreign architecture's -dev packages are installed here, so
# libgstreamer-plugins-base1.0-dev (not co-installable across architectures) installs normally.
FROM debian:bookworm

ARG DEB_ARCH=arm64
ARG GNU_TRIPLE=aarch64-linux-gnu

RUN dpkg --add-architecture "${DEB_ARCH}" \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates pkg-config make \
      "gcc-${GNU_TRIPLE}" "libc6-dev-${DEB_ARCH}-cross" \
      "libgstreamer1.0-dev:${DEB_ARCH}" "libgstreamer-plugins-base1.0-dev:${DEB_ARCH}" \
 && rm -rf /var/lib/apt/lists/*

# pkg-config reads the target's multiarch directory; no PKG_CONFIG_SYSROOT_DIR with multiarch.
ENV PKG_CONFIG_ALLOW_CROSS=1 \
    PKG_CONFIG_LIBDIR=/usr/lib/${GNU_TRIPLE}/pkgconfig:/usr/share/pkgconfig \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
    CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
