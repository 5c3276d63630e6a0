#!/usr/bin/python3
"""Real WebRTC clients for the Janus integration test (aic/tests/janus.rs), GStreamer webrtcbin.

  publish   ROOM WAV [I420 W H FPS KBPS]
                                join ROOM as a publisher and send WAV (looped, paced in real
                                time) as Opus, and with the I420 file also its frames (looped,
                                paced) as VP8 at KBPS; prints "PUBLISHER <id>" once Janus answered
  subscribe-video MOUNTPOINT OUT SECS
                                watch a Streaming mountpoint and keep every RTP packet of its
                                video track (arrival time + bytes, see VideoDump) in OUT for SECS
                                seconds after the first; prints "VSTATS {json}"
  subscribe MOUNTPOINT OUT SECS [ROOM FEED DIRECT_OUT]
                                watch a Streaming mountpoint, record what arrives as 16 kHz mono
                                WAV to OUT for SECS seconds after the first packet; prints
                                "STATS {json}" (RTP packets, sequence gaps) at the end. With
                                ROOM FEED DIRECT_OUT, the same process first subscribes to the
                                publisher FEED straight from the VideoRoom (the path without
                                AIC) and records it to DIRECT_OUT; both subscriptions then also
                                write OUT.arrivals.json / DIRECT_OUT.arrivals.json: the sequence
                                number and arrival time of every RTP packet, on one clock
                                (time.monotonic() of this process), for the signal latency

Signalling is the Janus HTTP API on 127.0.0.1:8088; ICE runs on 127.0.0.2 (a veth inside the
test's network namespace: Janus and libnice skip loopback interfaces).
"""
import json
import sys
import threading
import time
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

URL = "http://127.0.0.1:8088/janus"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Janus:
    def __init__(self):
        self.tx = 0
        self.session = self.post(URL, {"janus": "create"})["data"]["id"]
        self.events = []
        self.cv = threading.Condition()
        threading.Thread(target=self._poll, daemon=True).start()

    def post(self, url, body):
        self.tx += 1
        body["transaction"] = "py%d" % self.tx
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as f:
            r = json.load(f)
        if r.get("janus") == "error":
            raise RuntimeError(r)
        return r

    def _poll(self):
        while True:
            try:
                with urllib.request.urlopen("%s/%d?maxev=5" % (URL, self.session), timeout=40) as f:
                    r = json.load(f)
            except Exception as e:  # noqa: BLE001 - the test reads the log
                log("poll:", e)
                time.sleep(0.2)
                continue
            evs = r if isinstance(r, list) else [r]
            with self.cv:
                self.events.extend(e for e in evs if e.get("janus") != "keepalive")
                self.cv.notify_all()

    def wait_event(self, pred, timeout=15):
        end = time.time() + timeout
        with self.cv:
            while True:
                for i, e in enumerate(self.events):
                    if pred(e):
                        return self.events.pop(i)
                left = end - time.time()
                if left <= 0:
                    raise TimeoutError("no matching Janus event; got %s" % self.events)
                self.cv.wait(left)

    def attach(self, plugin):
        return self.post("%s/%d" % (URL, self.session), {"janus": "attach", "plugin": plugin})["data"]["id"]

    def message(self, handle, body, jsep=None):
        msg = {"janus": "message", "body": body}
        if jsep:
            msg["jsep"] = jsep
        return self.post("%s/%d/%d" % (URL, self.session, handle), msg)


def make_webrtcbin(pipe, name="w"):
    w = Gst.ElementFactory.make("webrtcbin", name)
    w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    # The ICE agent is left as it is: reading `ice-agent` from Python drops a reference
    # webrtcbin still needs (GStreamer 1.22). Inside the test's namespace nothing leaves anyway.
    pipe.add(w)
    return w


def wait_gathered(w, timeout=10):
    end = time.time() + timeout
    while w.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
        if time.time() > end:
            break
        time.sleep(0.05)


def call(w, signal, arg, key=None, timeout=10):
    """Emits a webrtcbin action signal that answers through a promise; returns the SDP text
    of reply[key]."""
    done = threading.Event()
    out = {}

    def on_reply(p, _a, _b):
        # Keep the reply and the description referenced while reading them: Python's
        # wrappers do not own them, and a chained temporary leaves a dangling SDP.
        r = p.get_reply()
        if key and r is not None:
            d = r.get_value(key)
            sdp = d.sdp
            out["v"] = sdp.as_text()
        done.set()

    w.emit(signal, arg, Gst.Promise.new_with_change_func(on_reply, None, None))
    if not done.wait(timeout):
        sys.exit("webrtcbin did not answer %s" % signal)
    if key and out.get("v") is None:
        sys.exit("webrtcbin %s gave no %s" % (signal, key))
    return out.get("v")


def push_video(src, path, width, height, fps):
    """Pushes the raw I420 frames of `path` into appsrc `src`, looped, paced in real time:
    frame n leaves at t0 + n / fps (appsrc stamps it with the running time)."""
    size = width * height * 3 // 2
    with open(path, "rb") as f:
        data = f.read()
    frames = [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    if not frames:
        sys.exit("no whole %dx%d I420 frame in %s" % (width, height, path))
    t0 = time.monotonic()
    n = 0
    while True:
        buf = Gst.Buffer.new_wrapped(frames[n % len(frames)])
        if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            return
        n += 1
        delay = t0 + n / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def publish(room, wav, video=None):
    """`video` = (I420 file, width, height, fps, kbps): also publish that picture as VP8,
    encoded the way a browser does (libvpx realtime, CBR, no periodic keyframes; a keyframe
    only when a receiver asks with RTCP PLI/FIR, which webrtcbin turns into a key-unit
    request to the encoder)."""
    Gst.init(None)
    janus = Janus()
    h = janus.attach("janus.plugin.videoroom")
    # Paced like a browser: one 20 ms packet every 20 ms. The clock sync is on the encoded
    # packets (identity after opusenc): synced before the encoder, wavparse's blocks of several
    # frames came out of opusenc as bursts (measured at the bridge: 25 ms q95 relative delay on
    # an idle loopback), which no real publisher sends.
    pipe = Gst.parse_launch(
        "multifilesrc location=%s loop=true ! wavparse ignore-length=true ! audioconvert ! "
        "audioresample ! audio/x-raw,rate=48000,channels=1 ! "
        "opusenc bitrate=32000 inband-fec=true packet-loss-percentage=5 frame-size=20 ! "
        "identity sync=true ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,"
        "clock-rate=48000 ! queue name=q" % wav
    )
    if video:
        _, vw, vh, fps, kbps = video
        vbin = Gst.parse_bin_from_description(
            "appsrc name=vsrc is-live=true do-timestamp=true format=time "
            "caps=video/x-raw,format=I420,width=%d,height=%d,framerate=%d/1 ! queue ! "
            "vp8enc deadline=1 cpu-used=-6 end-usage=cbr target-bitrate=%d "
            "keyframe-max-dist=100000 lag-in-frames=0 threads=1 ! "
            "rtpvp8pay pt=96 mtu=1200 picture-id-mode=15-bit ! "
            "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! "
            "queue name=vq" % (vw, vh, fps, kbps * 1000),
            False,
        )
        vbin.add_pad(Gst.GhostPad.new("src", vbin.get_by_name("vq").get_static_pad("src")))
        pipe.add(vbin)
    w = make_webrtcbin(pipe)
    offered = threading.Event()

    def on_negotiation_needed(el):
        # The offer is made here, on webrtcbin's thread, as soon as it can be made.
        def on_offer(p, _a, _b):
            r = p.get_reply()
            d = r.get_value("offer")
            sdp = d.sdp
            el.emit("set-local-description", desc("offer", sdp.as_text()), None)
            offered.set()

        el.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None, None))

    w.connect("on-negotiation-needed", on_negotiation_needed)
    pipe.get_by_name("q").link(w)
    if video:
        vbin.link(w)
    pipe.set_state(Gst.State.PLAYING)
    if video:
        path, vw, vh, fps, _ = video
        threading.Thread(
            target=push_video, args=(vbin.get_by_name("vsrc"), path, vw, vh, fps), daemon=True
        ).start()
    if not offered.wait(15):
        sys.exit("webrtcbin made no offer")
    wait_gathered(w)
    log("publisher: gathered", w.get_property("ice-gathering-state"))
    sdp = w.get_property("local-description").sdp.as_text()
    janus.message(
        h,
        {"request": "joinandconfigure", "room": room, "ptype": "publisher", "display": "speaker"},
        {"type": "offer", "sdp": sdp},
    )
    ev = janus.wait_event(lambda e: e.get("jsep", {}).get("type") == "answer")
    pid = ev["plugindata"]["data"]["id"]
    set_remote(w, "answer", ev["jsep"]["sdp"])
    print("PUBLISHER %d" % pid, flush=True)
    GLib.MainLoop().run()


def promise_wait_offer(w):
    offer = call(w, "create-offer", None, "offer")
    call(w, "set-local-description", offer)
    return offer


def desc(kind, text):
    """A session description built from SDP text."""
    _, msg = GstSdp.SDPMessage.new_from_text(text)
    t = GstWebRTC.WebRTCSDPType.ANSWER if kind == "answer" else GstWebRTC.WebRTCSDPType.OFFER
    return GstWebRTC.WebRTCSessionDescription.new(t, msg)


def set_remote(w, kind, text):
    call(w, "set-remote-description", desc(kind, text))


class Receiver:
    """One subscription (one webrtcbin) inside a shared pipeline: RTP statistics, the arrival
    time of every RTP packet (time.monotonic(), the one clock of this process) and the audio,
    Opus-decoded and written as 16 kHz mono WAV to `out`."""

    def __init__(self, pipe, janus, handle, name, out):
        self.pipe, self.janus, self.handle, self.out = pipe, janus, handle, out
        self.stats = {"packets": 0, "gaps": 0, "lost": 0, "reordered": 0}
        self.first = None
        self.last_seq = None
        # (sequence number, arrival) per RTP packet, in the order they left webrtcbin.
        self.arrivals = []
        self.w = make_webrtcbin(pipe, name)
        self.w.connect("pad-added", self.on_pad)

    def on_rtp(self, pad, info):
        now = time.monotonic()
        buf = info.get_buffer()
        ok, m = buf.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(m.data[:4])
            buf.unmap(m)
            seq = (data[2] << 8) | data[3]
            self.stats["packets"] += 1
            self.arrivals.append((seq, now))
            if self.first is None:
                self.first = now
            if self.last_seq is not None:
                d = (seq - self.last_seq) & 0xFFFF
                if d == 0 or d > 0x8000:
                    self.stats["reordered"] += 1
                elif d > 1:
                    self.stats["gaps"] += 1
                    self.stats["lost"] += d - 1
            self.last_seq = seq
        return Gst.PadProbeReturn.OK

    def on_pad(self, _w, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        pad.add_probe(Gst.PadProbeType.BUFFER, self.on_rtp)
        bin_ = Gst.parse_bin_from_description(
            "rtpopusdepay ! opusdec plc=true ! audioconvert ! audioresample ! "
            "audio/x-raw,rate=16000,channels=1,format=S16LE ! wavenc ! filesink location=%s"
            % self.out,
            True,
        )
        self.pipe.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))

    def negotiate(self, request):
        """Sends `request` (watch / join as subscriber); Janus offers, webrtcbin answers."""
        self.janus.message(self.handle, request)
        ev = self.janus.wait_event(
            lambda e: e.get("sender") == self.handle and e.get("jsep", {}).get("type") == "offer"
        )
        set_remote(self.w, "offer", ev["jsep"]["sdp"])
        answer = call(self.w, "create-answer", None, "answer")
        call(self.w, "set-local-description", desc("answer", answer))
        wait_gathered(self.w)
        sdp = self.w.get_property("local-description").sdp.as_text()
        self.janus.message(self.handle, {"request": "start"}, {"type": "answer", "sdp": sdp})

    def write_arrivals(self):
        with open(self.out + ".arrivals.json", "w") as f:
            json.dump({"seq": [s for s, _ in self.arrivals], "t": [t for _, t in self.arrivals]}, f)


class VideoDump:
    """One subscription to a mountpoint whose video is not decoded here: every RTP packet of
    the video track is kept with its arrival time (time.monotonic()) and written to `out` as
    records of [f64 arrival][u16 length][packet], big-endian; the audio track is dropped. On
    its first video packet it asks for a keyframe, as a decoder that starts without one does
    (webrtcbin sends RTCP PLI)."""

    def __init__(self, pipe, janus, handle, out):
        self.pipe, self.janus, self.handle, self.out = pipe, janus, handle, out
        self.packets = []
        self.first = None
        self.asked = False
        self.caps = None
        self.w = make_webrtcbin(pipe, "mountpoint")
        self.w.connect("pad-added", self.on_pad)

    def on_rtp(self, pad, info):
        now = time.monotonic()
        buf = info.get_buffer()
        ok, m = buf.map(Gst.MapFlags.READ)
        if ok:
            self.packets.append((now, bytes(m.data)))
            buf.unmap(m)
            if self.first is None:
                self.first = now
        if not self.asked:
            self.asked = True
            s = Gst.Structure.new_empty("GstForceKeyUnit")
            s.set_value("all-headers", True)
            pad.push_event(Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM, s))
        return Gst.PadProbeReturn.OK

    def on_pad(self, _w, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_string("media") if caps and caps.get_size() else None
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        if media == "video":
            self.caps = caps.to_string()
            pad.add_probe(Gst.PadProbeType.BUFFER, self.on_rtp)
        pad.link(sink.get_static_pad("sink"))

    negotiate = Receiver.negotiate

    def write(self):
        import struct

        with open(self.out, "wb") as f:
            for t, p in self.packets:
                f.write(struct.pack(">dH", t, len(p)))
                f.write(p)


def subscribe_video(mountpoint, out, secs):
    Gst.init(None)
    janus = Janus()
    pipe = Gst.Pipeline.new("sub")
    r = VideoDump(pipe, janus, janus.attach("janus.plugin.streaming"), out)
    pipe.set_state(Gst.State.PLAYING)
    r.negotiate({"request": "watch", "id": mountpoint})
    log("subscriber: video started")
    end = time.time() + secs + 20
    while time.time() < end:
        if r.first and time.monotonic() - r.first >= secs:
            break
        time.sleep(0.1)
    pipe.set_state(Gst.State.NULL)
    r.write()
    print("VSTATS %s" % json.dumps({"packets": len(r.packets), "caps": r.caps}), flush=True)


def subscribe(mountpoint, out, secs, direct=None):
    """`direct` = (room, feed, out2): also subscribe, in the same pipeline and before the
    mountpoint, to the publisher `feed` straight from the VideoRoom, recorded to out2."""
    Gst.init(None)
    janus = Janus()
    pipe = Gst.Pipeline.new("sub")
    d = None
    if direct:
        room, feed, out2 = direct
        d = Receiver(pipe, janus, janus.attach("janus.plugin.videoroom"), "direct", out2)
    r = Receiver(pipe, janus, janus.attach("janus.plugin.streaming"), "mountpoint", out)
    pipe.set_state(Gst.State.PLAYING)
    if d:
        d.negotiate(
            {"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}
        )
        log("subscriber: direct subscription to feed %d started" % feed)
    r.negotiate({"request": "watch", "id": mountpoint})
    log("subscriber: started")
    done = threading.Event()

    def stopper():
        end = time.time() + secs + 20
        while time.time() < end:
            if r.first and time.monotonic() - r.first >= secs:
                break
            time.sleep(0.1)
        pipe.send_event(Gst.Event.new_eos())
        done.set()

    threading.Thread(target=stopper, daemon=True).start()
    bus = pipe.get_bus()
    done.wait()
    bus.timed_pop_filtered(5 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    stats = dict(r.stats)
    if d:
        stats["direct"] = d.stats
        d.write_arrivals()
        r.write_arrivals()
    print("STATS %s" % json.dumps(stats), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "publish" and len(sys.argv) == 4:
        publish(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "publish" and len(sys.argv) == 9:
        v = (sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]))
        publish(int(sys.argv[2]), sys.argv[3], v)
    elif sys.argv[1] == "subscribe-video" and len(sys.argv) == 5:
        subscribe_video(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "subscribe" and len(sys.argv) == 5:
        subscribe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "subscribe" and len(sys.argv) == 8:
        direct = (int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
        subscribe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), direct)
    else:
        sys.exit(
            "usage: webrtc_client.py publish ROOM WAV [I420 WIDTH HEIGHT FPS KBPS] | "
            "subscribe MOUNTPOINT OUT SECS [ROOM FEED DIRECT_OUT] | "
            "subscribe-video MOUNTPOINT OUT SECS"
        )
