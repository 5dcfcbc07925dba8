"""Tests for c10/model.py: structure of the released CIFAR-10 spiking CNN and
equivalence of the multi-step fast path with the step-by-step reference loop."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron

from c10.model import CIFAR10SNN
from snn import StepwiseBatchNorm2d, UnbindLIFNode

T = 3
BATCH = 2
TOL = 1e-5


def _lif_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, neuron.LIFNode)]


class SpikeRecorder:
    """Forward hooks on every LIF layer; accumulates the number of emitted spikes."""

    def __init__(self, model):
        self.counts = {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, neuron.LIFNode):
                self.counts[name] = 0.0
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, inputs, output):
            self.counts[name] += output.detach().sum().item()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _make_pair():
    """Fast (multi-step) and reference (step loop) models holding identical weights.

    The BatchNorm after every convolution makes the firing of the conv LIF layers
    independent of the input scale, but the two linear layers have no BN: with
    the default init (|w| <= 1/sqrt(fan_in)) their LIF layers stay silent for
    T=3. Their weights are scaled up so that every layer emits spikes."""
    torch.manual_seed(2020)
    fast = CIFAR10SNN(T=T, multi_step=True)
    with torch.no_grad():
        fast.fc[2].weight.mul_(4.0)
        fast.fc[4].weight.mul_(10.0)
    ref = CIFAR10SNN(T=T, multi_step=False)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _inputs():
    g = torch.Generator().manual_seed(7)
    x = 2.0 * torch.randn(BATCH, 3, 32, 32, generator=g)
    labels = torch.tensor([3, 8])
    return x, F.one_hot(labels, 10).float()


@pytest.fixture(scope='module')
def trained_pair():
    """One training step (forward, MSE vs one-hot, backward) on both paths."""
    fast, ref = _make_pair()
    fast.train()
    ref.train()
    x, target = _inputs()
    result = {'fast': fast, 'ref': ref, 'x': x, 'target': target}
    for key, model in (('fast', fast), ('ref', ref)):
        rec = SpikeRecorder(model)
        torch.manual_seed(123)  # identical dropout mask in both paths
        rate = model(x)
        loss = F.mse_loss(rate, target)
        loss.backward()
        rec.remove()
        functional.reset_net(model)
        result[key + '_rate'] = rate.detach()
        result[key + '_loss'] = loss.item()
        result[key + '_spikes'] = rec.counts
    return result


def _max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------- structure

def test_parameter_counts():
    model = CIFAR10SNN()
    weights = sum(p.numel() for m in model.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in m.parameters())
    bn = sum(p.numel() for m in model.modules()
             if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert weights == 36_715_264
    assert bn == 3072
    assert sum(p.numel() for p in model.parameters()) == 36_715_264 + 3072
    # no conv / linear layer has a bias
    assert all(m.bias is None for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_state_dict_keys_and_layer_indices():
    model = CIFAR10SNN()
    keys = set(model.state_dict().keys())
    bn_suffixes = ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    expected = {'static_conv.0.weight', 'fc.2.weight', 'fc.4.weight'}
    expected |= {f'static_conv.1.{s}' for s in bn_suffixes}
    for conv_idx in (1, 4, 8, 11, 14):
        expected.add(f'conv.{conv_idx}.weight')
        expected |= {f'conv.{conv_idx + 1}.{s}' for s in bn_suffixes}
    assert keys == expected

    assert tuple(model.state_dict()['fc.2.weight'].shape) == (2048, 16384)
    assert tuple(model.state_dict()['fc.4.weight'].shape) == (100, 2048)
    assert tuple(model.state_dict()['static_conv.0.weight'].shape) == (256, 3, 3, 3)
    lif_idx = [i for i, m in enumerate(model.conv) if isinstance(m, neuron.LIFNode)]
    pool_idx = [i for i, m in enumerate(model.conv) if isinstance(m, torch.nn.MaxPool2d)]
    assert lif_idx == [0, 3, 6, 10, 13, 16]
    assert pool_idx == [7, 17]
    assert len(model.conv) == 18
    assert isinstance(model.fc[1], layer.Dropout) and model.fc[1].p == 0.5
    assert isinstance(model.fc[3], neuron.LIFNode) and isinstance(model.fc[5], neuron.LIFNode)
    for name in _lif_names(model):
        lif = model.get_submodule(name)
        assert lif.tau == 2.0 and lif.v_threshold == 1.0 and lif.v_reset == 0.0
        assert lif.detach_reset and lif.backend == 'torch'
        assert type(lif.surrogate_function).__name__ == 'ATan'


def test_step_modes():
    fast = CIFAR10SNN(T=2, multi_step=True)
    ref = CIFAR10SNN(T=2, multi_step=False)
    assert all(m.step_mode == 'm' for m in fast.modules() if hasattr(m, 'step_mode'))
    assert all(m.step_mode == 's' for m in ref.modules() if hasattr(m, 'step_mode'))
    fast.set_multi_step(False)
    assert all(m.step_mode == 's' for m in fast.modules() if hasattr(m, 'step_mode'))


# ------------------------------------------------------------ BatchNorm unit

def test_stepwise_batchnorm_uses_per_step_statistics():
    torch.manual_seed(0)
    # time steps with very different statistics, so pooling T*N would be visible
    x = torch.randn(3, 4, 5, 6, 6) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1, 1) \
        + torch.tensor([0.0, 2.0, -1.0]).view(3, 1, 1, 1, 1)
    bn = StepwiseBatchNorm2d(5, step_mode='m')
    ref = torch.nn.BatchNorm2d(5)
    pooled = layer.BatchNorm2d(5, step_mode='m')
    y = bn(x)
    y_ref = torch.stack([ref(x[t]) for t in range(3)])
    y_pooled = pooled(x)
    assert y.shape == x.shape
    assert _max_abs_diff(y, y_ref) < 1e-6
    assert _max_abs_diff(bn.running_mean, ref.running_mean) < 1e-7
    assert _max_abs_diff(bn.running_var, ref.running_var) < 1e-7
    assert bn.num_batches_tracked.item() == 3
    # SpikingJelly's multi-step BN pools the steps: different output and stats
    assert _max_abs_diff(y, y_pooled) > 0.1
    assert _max_abs_diff(bn.running_mean, pooled.running_mean) > 1e-3
    # evaluation: running statistics, identical for the pooled and per-step forms
    bn.eval()
    ref.eval()
    assert _max_abs_diff(bn(x), torch.stack([ref(x[t]) for t in range(3)])) < 1e-6


# ------------------------------------------------------------------ LIF unit

@pytest.mark.parametrize('training', [True, False])
def test_unbind_lif_matches_spikingjelly_lif(training):
    """The LIF used by the model is SpikingJelly's LIFNode (torch backend) step for
    step: same spikes, membrane potentials and input gradients, exactly."""
    kwargs = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True, backend='torch',
                  step_mode='m', store_v_seq=True)
    from spikingjelly.activation_based import surrogate
    ours = UnbindLIFNode(surrogate_function=surrogate.ATan(), **kwargs)
    theirs = neuron.LIFNode(surrogate_function=surrogate.ATan(), **kwargs)
    ours.train(training)
    theirs.train(training)
    torch.manual_seed(0)
    x = (1.5 * torch.randn(5, 4, 64)).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    s1, s2 = ours(x), theirs(x2)
    assert 0 < s1.sum() < s1.numel()
    assert torch.equal(s1, s2)
    assert torch.equal(ours.v, theirs.v)
    assert torch.equal(ours.v_seq, theirs.v_seq)
    if training:
        w = torch.randn_like(s1)
        (s1 * w).sum().backward()
        (s2 * w).sum().backward()
        assert x.grad.abs().sum() > 0
        assert torch.equal(x.grad, x2.grad)


# ------------------------------------------------------ fast == step loop

def test_every_layer_fires(trained_pair):
    for key in ('fast', 'ref'):
        counts = trained_pair[key + '_spikes']
        assert set(counts) == {'conv.0', 'conv.3', 'conv.6', 'conv.10', 'conv.13',
                               'conv.16', 'fc.3', 'fc.5'}
        for name, c in counts.items():
            assert c > 0, f'{key}: LIF layer {name} emitted no spike'
    # identical spike counts layer by layer
    assert trained_pair['fast_spikes'] == trained_pair['ref_spikes']


def test_training_outputs_equal(trained_pair):
    fast_rate, ref_rate = trained_pair['fast_rate'], trained_pair['ref_rate']
    assert fast_rate.shape == (BATCH, 10)
    assert fast_rate.abs().sum() > 0
    assert ((fast_rate >= 0) & (fast_rate <= 1)).all()
    # every class score is (spike count of 10 neurons over T steps) / (10 T)
    counts = fast_rate * 10 * T
    assert _max_abs_diff(counts, counts.round()) < 1e-4
    assert _max_abs_diff(fast_rate, ref_rate) <= TOL
    assert abs(trained_pair['fast_loss'] - trained_pair['ref_loss']) <= TOL


def test_training_gradients_equal(trained_pair):
    fast, ref = trained_pair['fast'], trained_pair['ref']
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in fast.named_parameters()]
    assert len(names) == 20
    for name, p in fast.named_parameters():
        q = ref_params[name]
        assert p.grad is not None and q.grad is not None, name
        assert p.grad.abs().max() > 0, f'zero gradient for {name}'
        assert _max_abs_diff(p.grad, q.grad) <= TOL, name


def test_training_running_statistics_equal(trained_pair):
    fast, ref = trained_pair['fast'], trained_pair['ref']
    ref_buffers = dict(ref.named_buffers())
    checked = 0
    for name, b in fast.named_buffers():
        if name.endswith(('running_mean', 'running_var')):
            assert _max_abs_diff(b, ref_buffers[name]) <= TOL, name
            checked += 1
    assert checked == 12
    # the running statistics did move away from their initial values
    assert fast.state_dict()['conv.15.running_mean'].abs().max() > 1e-3
    # the static conv BN is applied once per batch, the others once per time step
    sd = fast.state_dict()
    assert sd['static_conv.1.num_batches_tracked'].item() == 1
    for i in (2, 5, 9, 12, 15):
        assert sd[f'conv.{i}.num_batches_tracked'].item() == T
        assert ref.state_dict()[f'conv.{i}.num_batches_tracked'].item() == T


def test_adam_step_and_eval_equal(trained_pair):
    """After an identical Adam step, eval-mode outputs of both paths agree."""
    fast, ref = trained_pair['fast'], trained_pair['ref']
    for model in (fast, ref):
        torch.optim.Adam(model.parameters(), lr=1e-4).step()
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        assert _max_abs_diff(p, ref_params[name]) <= TOL, name

    x = trained_pair['x']
    # Calibrate the running statistics (momentum 1: they become the statistics of
    # the last time step) so that every layer also fires in evaluation mode.
    with torch.no_grad():
        for model in (fast, ref):
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 1.0
            torch.manual_seed(321)
            model(x)
            functional.reset_net(model)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.1
    ref_buffers = dict(ref.named_buffers())
    for name, b in fast.named_buffers():
        assert _max_abs_diff(b, ref_buffers[name]) <= TOL, name

    # Without the x2 dropout scaling (and with the reduced variance of the
    # running statistics) the linear layers would be almost silent: scale them
    # up identically in both models.
    with torch.no_grad():
        for model in (fast, ref):
            model.fc[2].weight.mul_(2.0)
            model.fc[4].weight.mul_(3.0)
    fast.eval()
    ref.eval()
    rates = []
    spikes = []
    with torch.no_grad():
        for model in (fast, ref):
            rec = SpikeRecorder(model)
            rates.append(model(x))
            rec.remove()
            functional.reset_net(model)
            spikes.append(rec.counts)
    assert all(c > 0 for c in spikes[0].values()), str(spikes[0])
    assert spikes[0] == spikes[1]
    assert rates[0].abs().sum() > 0
    assert _max_abs_diff(rates[0], rates[1]) <= TOL

    # reset_net clears all state: a second evaluation gives the same result
    with torch.no_grad():
        again = fast(x)
    functional.reset_net(fast)
    assert torch.equal(again, rates[0])
    fast.train()
    ref.train()


def test_reset_net_clears_state():
    model = CIFAR10SNN(T=2)
    x, _ = _inputs()
    model.train()
    model(x)
    assert model.fc[1].mask is not None
    assert any(isinstance(m.v, torch.Tensor) for m in model.modules()
               if isinstance(m, neuron.LIFNode))
    functional.reset_net(model)
    assert model.fc[1].mask is None
    for m in model.modules():
        if isinstance(m, neuron.LIFNode):
            assert m.v == 0.0


def test_dropout_mask_shared_over_time_steps():
    """In the fast path one dropout mask is used for all T steps of a sample."""
    model = CIFAR10SNN(T=2)
    model.train()
    seen = []
    handle = model.fc[1].register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    x, _ = _inputs()
    model(x)
    handle.remove()
    inp, out = seen[0]
    assert inp.shape == (2, BATCH, 16384)
    mask = model.fc[1].mask
    assert mask.shape == (BATCH, 16384)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(out, inp * mask)
