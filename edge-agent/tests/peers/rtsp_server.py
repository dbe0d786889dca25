#!/usr/bin/python3
"""RTSP test camera: GStreamer's gst-rtsp-server serving H.264 test scenes.

Usage: rtsp_server.py [PORT] [WIDTHxHEIGHT] [FPS]   (PORT 0 or absent: any free port)
Prints `ready PORT` once listening. Mounts:
  /motion  a white ball moving over black (videotestsrc pattern=ball)
  /static  75 % colour bars, nothing moves
  /flash   the same bars with a sudden brightness flash (300 ms) every 2 s, nothing moves
  /snow    the SMPTE test card, whose lower right corner is random snow
Run with the Debian python (/usr/bin/python3): it has the `gi` bindings.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
width, height = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "640x360").split("x"))
fps = int(sys.argv[3]) if len(sys.argv) > 3 else 10

caps = f"video/x-raw,width={width},height={height},framerate={fps}/1"
# Main profile without B-frames, a keyframe every second: what IP cameras typically send.
enc = (
    f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1000 "
    f"! video/x-h264,profile=main ! rtph264pay name=pay0 pt=96 config-interval=1"
)
scenes = {
    "/motion": f"videotestsrc is-live=true pattern=ball ! {caps} ! {enc}",
    "/static": f"videotestsrc is-live=true pattern=smpte75 ! {caps} ! {enc}",
    "/flash": f"videotestsrc is-live=true pattern=smpte75 ! {caps} ! videobalance name=balance ! {enc}",
    "/snow": f"videotestsrc is-live=true pattern=smpte ! {caps} ! {enc}",
}


def flash(balance):
    """Every 2 s: brightness up for 300 ms, then back."""

    def on():
        balance.set_property("brightness", 0.6)
        GLib.timeout_add(300, off)
        return True

    def off():
        balance.set_property("brightness", 0.0)
        return False

    GLib.timeout_add(2000, on)


def configured(_factory, media):
    balance = media.get_element().get_by_name("balance")
    if balance is not None:
        flash(balance)


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(port))
mounts = server.get_mount_points()
for path, launch in scenes.items():
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {launch} )")
    # One pipeline per session. Shared media crash this gst-rtsp-server (1.22) now and then
    # when two sessions set up at once (`gst_rtsp_media_get_rates: assertion failed`).
    factory.set_shared(False)
    factory.connect("media-configure", configured)
    mounts.add_factory(path, factory)
if server.attach(None) == 0:
    print("cannot listen", file=sys.stderr)
    sys.exit(1)
print(f"ready {server.get_bound_port()}", flush=True)
GLib.MainLoop().run()
