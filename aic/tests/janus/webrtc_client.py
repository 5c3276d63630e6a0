#!/usr/bin/python3
"""Real WebRTC clients for the Janus integration test (aic/tests/janus.rs), GStreamer webrtcbin.

  publish   ROOM WAV            join ROOM as a publisher and send WAV (looped, paced in real
                                time) as Opus; prints "PUBLISHER <id>" once Janus answered
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


def publish(room, wav):
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
    pipe.set_state(Gst.State.PLAYING)
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
    if sys.argv[1] == "publish":
        publish(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "subscribe" and len(sys.argv) == 5:
        subscribe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "subscribe" and len(sys.argv) == 8:
        direct = (int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
        subscribe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), direct)
    else:
        sys.exit(
            "usage: webrtc_client.py publish ROOM WAV | subscribe MOUNTPOINT OUT SECS "
            "[ROOM FEED DIRECT_OUT]"
        )
