"""Package metadata of cvattn_mm; dependencies come from requirements/."""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Requirement lines of ``requirements/<name>.txt`` without comments."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def read_version():
    with open(osp.join(HERE, 'cvattn_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def read_readme():
    with open(osp.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='cvattn_mm',
    version=read_version(),
    description='Computer-vision attention modules as plug-ins for OpenMMLab 2.x',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['cvattn_mm', 'cvattn_mm.*']),
    include_package_data=True,
    install_requires=read_requirements('runtime'),
    extras_require={
        'mm': read_requirements('mminstall'),
        'optional': read_requirements('optional'),
        'tests': read_requirements('tests'),
    },
    entry_points={'console_scripts': ['cvattn-mm=cvattn_mm.cli:main']},
    zip_safe=False,
)
