"""CSRAHead: the CSRA score, mmpretrain compatibility, single- and multi-label classifiers."""
import pytest
import torch
from mmpretrain.models.heads import CSRAClsHead
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from mmpretrain.structures import DataSample

import cvattn_mm  # noqa: F401  (registers CSRAHead)
from cvattn_mm.heads import CSRAHead
from cvattn_mm.registry import MODELS


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def direct_scores(head, x):
    """Paper equations per head and class, with the official normalised classifier."""
    total = 0
    for t, sub in zip(head.temp_list, head.csra_heads):
        m = sub.head.weight[:, :, 0, 0]  # (K, C)
        m = m / m.norm(dim=1, keepdim=True)
        s = torch.einsum('kc,nchw->nkhw', m, x).flatten(2)  # s_ij, (N, K, HW)
        if t == 99:
            attention = s.max(-1).values
        else:
            weights = torch.exp(t * s) / torch.exp(t * s).sum(-1, keepdim=True)
            attention = (weights * s).sum(-1)
        total = total + s.mean(-1) + head.lam * attention
    return total


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(temperatures=(1, )),
    dict(temperatures=(0.5, 2.0)),
    dict(temperatures=(1, 3, 99), lam=0.5),
    dict(num_heads=4, lam=0.1),
    dict(lam=0.),
])
def test_score_against_direct_formula(kwargs):
    torch.manual_seed(0)
    head = CSRAHead(16, 5, **kwargs).double()
    head.init_weights()
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(head((x, )), direct_scores(head, x), rtol=1e-10, atol=1e-10)


def test_default_is_mean_plus_lambda_max():
    torch.manual_seed(0)
    head = CSRAHead(8, 3)
    assert head.temp_list == [99] and head.lam == 0.2 and not head.multi_label
    x = torch.randn(2, 8, 4, 6)
    w = head.csra_heads[0].head.weight[:, :, 0, 0]
    s = torch.einsum('kc,nchw->nkhw', w / w.norm(dim=1, keepdim=True), x).flatten(2)
    with torch.no_grad():
        torch.testing.assert_close(head((x, )), s.mean(-1) + 0.2 * s.amax(-1))


@pytest.mark.parametrize('num_heads', [1, 2, 4, 6, 8])
def test_matches_mmpretrain_csra_cls_head(num_heads):
    """Same state-dict keys as mmpretrain's head; loaded weights give the same logits."""
    torch.manual_seed(0)
    ref = CSRAClsHead(num_classes=6, in_channels=16, num_heads=num_heads, lam=0.3)
    head = CSRAHead(16, 6, num_heads=num_heads, lam=0.3, multi_label=True)
    assert head.temp_list == ref.temp_list
    head.load_state_dict(ref.state_dict())  # strict: identical keys and shapes
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(head((x, )), ref((x, )), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    """heads * num_classes * C, no bias."""
    for kwargs, heads in [(dict(), 1), (dict(num_heads=6), 6), (dict(temperatures=(1, 2)), 2)]:
        params = n_params(CSRAHead(channels, 1000, **kwargs))
        assert params == heads * 1000 * channels
    print(f'CSRAHead C={channels}, 1000 classes, 1 head: '
          f'{n_params(CSRAHead(channels, 1000))} params')


def test_parameter_count_values():
    assert n_params(CSRAHead(256, 1000)) == 256000
    assert n_params(CSRAHead(2048, 1000)) == 2048000


def test_init_cfg_applies_to_the_classifier():
    torch.manual_seed(0)
    head = CSRAHead(256, 100, num_heads=2)
    head.init_weights()
    for sub in head.csra_heads:
        assert abs(sub.head.weight.std().item() - 0.01) < 1e-3
        assert abs(sub.head.weight.mean().item()) < 1e-3


def test_builds_from_mmpretrain_and_cvattn_registries():
    cfg = dict(type='CSRAHead', in_channels=32, num_classes=4, num_heads=2, lam=0.1)
    assert isinstance(MMPRETRAIN_MODELS.build(cfg), CSRAHead)
    assert isinstance(MODELS.build(dict(cfg, type='cvattn_mm.CSRAHead')), CSRAHead)
    assert MMPRETRAIN_MODELS.build(dict(cfg, multi_label=True)).loss_module.use_sigmoid
    assert not MMPRETRAIN_MODELS.build(cfg).loss_module.use_sigmoid


def tiny_classifier(multi_label, num_classes=4):
    """mmpretrain's ResNet-18 layout at 1/8 width and CSRAHead, built from a config dict."""
    cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,
                      out_indices=(3, )),
        head=dict(type='CSRAHead', in_channels=64, num_classes=num_classes,
                  multi_label=multi_label, **({} if multi_label else dict(cal_acc=True))),
        data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False))
    torch.manual_seed(0)
    model = MMPRETRAIN_MODELS.build(cfg)
    model.init_weights()
    return model


def _batch(labels, n_classes=None, size=64):
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
              for _ in labels]
    samples = [DataSample().set_gt_label(label) for label in labels]
    if n_classes is not None:
        for sample in samples:
            sample.set_field(n_classes, 'num_classes', field_type='metainfo')
    return dict(inputs=inputs, data_samples=samples)


def test_single_label_classifier_loss_and_predict():
    from mmengine.optim import OptimWrapper
    from mmpretrain.evaluation import Accuracy

    model = tiny_classifier(multi_label=False)
    data = _batch([0, 3, 1])
    processed = model.data_preprocessor(data, training=True)
    losses = model(**processed, mode='loss')
    assert set(losses) == {'loss', 'accuracy_top-1'}
    assert torch.isfinite(losses['loss']) and losses['loss'] > 0
    # The softmax cross-entropy of the logits, as ClsHead computes it.
    logits = model(processed['inputs'], mode='tensor')
    assert logits.shape == (3, 4)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 1]))
    torch.testing.assert_close(losses['loss'], expected)

    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    before = model.head.csra_heads[0].head.weight.detach().clone()
    log_vars = model.train_step(data, optim)
    assert torch.isfinite(log_vars['loss'])
    assert not torch.equal(before, model.head.csra_heads[0].head.weight)

    model.eval()
    predictions = model.val_step(data)
    assert len(predictions) == 3
    for sample in predictions:
        assert sample.pred_label.shape == (1, )  # a class index, as ClsHead predicts
        assert sample.pred_score.shape == (4, )
        torch.testing.assert_close(sample.pred_score.sum(), torch.tensor(1.))
        assert sample.pred_label.item() == sample.pred_score.argmax().item()
    metric = Accuracy(topk=(1, ))
    metric.process(None, [sample.to_dict() for sample in predictions])
    top1 = metric.compute_metrics(metric.results)['top1']
    assert 0 <= top1 <= 100


def test_single_label_accepts_mixed_scores():
    """Batch mixing (mixup, cutmix) gives gt_score instead of gt_label; ClsHead's path."""
    torch.manual_seed(0)
    head = CSRAHead(8, 3)
    x = torch.randn(2, 8, 3, 3)
    soft = torch.tensor([[0.7, 0.3, 0.], [0., 0.5, 0.5]])
    samples = [DataSample().set_gt_score(s) for s in soft]
    loss = head.loss((x, ), samples)['loss']
    logits = head((x, ))
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)


def test_multi_label_classifier_loss_and_predict():
    from mmpretrain.evaluation import MultiLabelMetric

    model = tiny_classifier(multi_label=True)
    data = _batch([[0, 2], [3], [1, 2, 3]], n_classes=4)
    processed = model.data_preprocessor(data, training=True)
    losses = model(**processed, mode='loss')
    assert set(losses) == {'loss'}
    logits = model(processed['inputs'], mode='tensor')
    target = torch.tensor([[1., 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 1]])
    # mmpretrain's sigmoid cross-entropy: summed over classes, averaged over samples.
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction='sum') / 3
    torch.testing.assert_close(losses['loss'], expected)
    losses['loss'].backward()
    assert model.head.csra_heads[0].head.weight.grad.abs().sum() > 0

    model.eval()
    predictions = model.val_step(data)
    with torch.no_grad():
        logits = model(model.data_preprocessor(data)['inputs'], mode='tensor')
    for sample, score in zip(predictions, torch.sigmoid(logits)):
        torch.testing.assert_close(sample.pred_score, score)
        assert torch.equal(sample.pred_label, torch.where(score >= 0.5)[0])
    metric = MultiLabelMetric()
    metric.process(None, [sample.to_dict() for sample in predictions])
    assert 'f1-score' in metric.compute_metrics(metric.results)


def test_multi_label_topk_predictions():
    torch.manual_seed(0)
    head = CSRAHead(8, 5, multi_label=True, topk=2)
    samples = head.predict((torch.randn(3, 8, 4, 4), ))
    assert all(sample.pred_label.shape == (2, ) for sample in samples)


def test_wrong_features_raise():
    head = CSRAHead(8, 3)
    with pytest.raises(ValueError, match=r'CSRAHead expects \(N, 8, H, W\).*\(2, 9, 4, 4\)'):
        head((torch.randn(2, 9, 4, 4), ))
    with pytest.raises(ValueError, match='CSRAHead expects'):
        head((torch.randn(2, 8), ))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(num_classes=0), 'num_classes'),
    (dict(num_heads=3), 'num_heads'),
    (dict(num_heads=0), 'num_heads'),
    (dict(lam=-0.1), 'lam'),
    (dict(temperatures=()), 'temperatures'),
    (dict(temperatures=99), 'temperatures'),
    (dict(temperatures=(1, 0)), 'temperatures'),
    (dict(temperatures=(1, 99), num_heads=1), 'num_heads'),
    (dict(multi_label='yes'), 'multi_label'),
    (dict(thr=0.5), 'thr'),
    (dict(multi_label=True, cal_acc=True), 'cal_acc'),
])
def test_invalid_arguments(kwargs, argument):
    kwargs = dict(dict(in_channels=8, num_classes=3), **kwargs)
    with pytest.raises(ValueError, match=f'CSRAHead.*{argument}'):
        CSRAHead(**kwargs)
