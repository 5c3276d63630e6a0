"""MTCNN's three networks (Zhang et al. 2016) as facenet-pytorch 2.6.0 defines them, so that its
published state dicts (`facenet_pytorch/data/{pnet,rnet,onet}.pt`) load with `strict=True`.

The layer definitions follow facenet-pytorch (MIT, (c) 2019 Timothy Esler); the weights are
MTCNN's original ones (MIT, (c) 2016 Kaipeng Zhang), ported through davidsandberg/facenet (MIT).

`Graph` wraps a net into the contract the Rust side runs (see README.md):
input RGB in 0..255 (float32, NCHW), normalised inside the graph as MTCNN expects
((x - 127.5) / 128); outputs `score` (face probability) and `reg` (box regression).
O-net's landmark head is dropped: the encoder needs boxes only.
"""
import importlib.util
import os

import torch
from torch import nn


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        a = self.softmax4_1(self.conv4_1(x))
        b = self.conv4_2(x)
        return b, a


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The Caffe weights flatten in (W, H, C) order.
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        a = self.softmax5_1(self.dense5_1(x))
        b = self.dense5_2(x)
        return b, a


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        a = self.softmax6_1(self.dense6_1(x))
        b = self.dense6_2(x)
        c = self.dense6_3(x)
        return b, c, a


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
# Fixed crop sizes of the second and third stage; P-net is fully convolutional.
CROP = {"pnet": None, "rnet": 24, "onet": 48}


class Graph(nn.Module):
    """One stage as exported: 0..255 RGB in, (`score`, `reg`) out.

    P-net: `score` [N, 1, h, w], `reg` [N, 4, h, w]; R-/O-net: `score` [N, 1], `reg` [N, 4]."""

    def __init__(self, name, net):
        super().__init__()
        self.name = name
        self.net = net

    def forward(self, image):
        out = self.net((image - 127.5) * 0.0078125)
        reg, prob = out[0], out[-1]
        return prob[:, 1:2], reg


def weights_dir(explicit=None):
    """Where facenet-pytorch's `data/` folder is: `explicit`, `$FACENET_PYTORCH_DATA`, or the
    installed package (found without importing it: its `__init__` needs torchvision)."""
    if explicit:
        return explicit
    if os.environ.get("FACENET_PYTORCH_DATA"):
        return os.environ["FACENET_PYTORCH_DATA"]
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load(name, data_dir):
    net = NETS[name]()
    state = torch.load(os.path.join(data_dir, f"{name}.pt"), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    g = Graph(name, net)
    g.eval()
    return g
