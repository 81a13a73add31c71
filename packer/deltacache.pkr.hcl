# Bakes the deltacache AMI: a stock Debian 12 (or Ubuntu 24.04 LTS) image plus the prebuilt
# artefacts from scripts/prepare_artifacts.sh (binary, bundle, config, TUF root, systemd
# unit, the monitoring of packer/monitoring/). Nothing is compiled or packaged on the builder: provisioners copy files into
# /tmp/deltacache-artifacts and run scripts/provision.sh --root / from there.
#
# Run it through scripts/bake.sh, which prepares the artefacts and reads the dataset, bundle
# seq and model fingerprint from the bundle's manifest.json. The `packer` block with
# required_plugins lives in plugins.pkr.hcl (Packer 1.7+ only; Debian's 1.6.6 refuses it):
#   packer 1.6:  packer build -var ... packer/deltacache.pkr.hcl
#   packer 1.7+: packer init packer/ && packer build -var ... packer/

variable "region" {
  type        = string
  description = "AWS region the builder instance runs in and the AMI is registered in."
  default     = "us-east-1"
}

variable "instance_type" {
  type        = string
  description = "Builder instance type; its architecture must match the binary's."
  default     = "t3.small"
}

variable "source_ami_owner" {
  type        = string
  description = "Owner of the base image: 136693071363 (Debian) or 099720109477 (Canonical)."
  default     = "136693071363"
}

variable "source_ami_name" {
  type        = string
  description = "Name filter of the base image: debian-12-amd64-* or ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*."
  default     = "debian-12-amd64-*"
}

variable "source_ami_architecture" {
  type        = string
  description = "Architecture of the base image; the binary must be built for it."
  default     = "x86_64"
}

variable "ssh_username" {
  type        = string
  description = "Login user of the base image: admin (Debian) or ubuntu (Ubuntu)."
  default     = "admin"
}

variable "root_volume_gib" {
  type        = number
  description = "Root volume size in GiB: room for the bundle, the state dir's versions and the OS."
  default     = 16
}

variable "root_device_name" {
  type        = string
  description = "Root device of the base image: /dev/xvda (Debian) or /dev/sda1 (Ubuntu)."
  default     = "/dev/xvda"
}

variable "binary_path" {
  type        = string
  description = "The prebuilt release binary (prepare_artifacts.sh: OUT/bin/deltacache)."
}

variable "bundle_dir" {
  type        = string
  description = "The bundle directory from build-base or compact (OUT/bundle)."
}

variable "config_file" {
  type        = string
  description = "The config installed as /etc/deltacache/config.toml (OUT/config.toml)."
}

variable "trusted_root_file" {
  type        = string
  description = "The TUF root (public keys and thresholds) installed as /etc/deltacache/root.json (OUT/root.json)."
}

variable "service_file" {
  type        = string
  description = "The systemd unit installed as /etc/systemd/system/deltacache.service (OUT/deltacache.service)."
}

variable "monitoring_dir" {
  type        = string
  description = "Prometheus rules and the Grafana dashboard (OUT/monitoring, from packer/monitoring/), installed under /usr/share/doc/deltacache/monitoring/."
}

variable "provision_script" {
  type        = string
  description = "scripts/provision.sh (OUT/scripts/provision.sh)."
}

variable "image_name" {
  type        = string
  description = "AMI name prefix; the AMI is named IMAGE_NAME-IMAGE_VERSION."
  default     = "deltacache"
}

variable "image_version" {
  type        = string
  description = "Unique per bake, e.g. 20261125T184500Z-seq42 (bake.sh makes one)."
}

variable "git_revision" {
  type        = string
  description = "Revision of the repository the binary and scripts came from."
}

variable "binary_version" {
  type        = string
  description = "`deltacache --version` of the baked binary."
}

variable "dataset" {
  type        = string
  description = "The bundle's dataset (manifest.json)."
}

variable "bundle_seq" {
  type        = string
  description = "The delta seq the bundle includes (manifest.json); instances fetch only later deltas."
}

variable "model_fingerprint" {
  type        = string
  description = "The bundle's model fingerprint (manifest.json); deltas must carry the same."
}

variable "manifest_output" {
  type        = string
  description = "Where the Packer manifest (with the AMI id) is written."
  default     = "packer-manifest.json"
}

locals {
  artifacts = "/tmp/deltacache-artifacts"
  tags = {
    Name              = "${var.image_name}-${var.image_version}"
    Application       = "deltacache"
    ImageVersion      = var.image_version
    Dataset           = var.dataset
    BundleSeq         = var.bundle_seq
    ModelFingerprint  = var.model_fingerprint
    DeltacacheVersion = var.binary_version
    GitRevision       = var.git_revision
  }
}

source "amazon-ebs" "deltacache" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = var.source_ami_architecture
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  # IMDSv2 is enforced by the launch template (http_tokens = "required"): the
  # metadata_options block and imds_support need the Amazon plugin (Packer 1.7+), and
  # Debian's packer 1.6.6 refuses them. The daemon's AWS SDK uses IMDSv2 either way.

  launch_block_device_mappings {
    device_name           = var.root_device_name
    volume_size           = var.root_volume_gib
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  ami_name        = "${var.image_name}-${var.image_version}"
  ami_description = "deltacache ${var.binary_version}, dataset ${var.dataset} at seq ${var.bundle_seq}, git ${var.git_revision}"
  encrypt_boot    = true
  tags            = local.tags
  snapshot_tags   = local.tags
  run_tags        = local.tags
}

build {
  sources = ["source.amazon-ebs.deltacache"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.artifacts}/bin ${local.artifacts}/bundle ${local.artifacts}/scripts ${local.artifacts}/monitoring"]
  }

  provisioner "file" {
    source      = var.binary_path
    destination = "${local.artifacts}/bin/deltacache"
  }

  # The trailing slash uploads the bundle's contents into the existing directory.
  provisioner "file" {
    source      = "${var.bundle_dir}/"
    destination = "${local.artifacts}/bundle"
  }

  provisioner "file" {
    source      = var.config_file
    destination = "${local.artifacts}/config.toml"
  }

  provisioner "file" {
    source      = var.trusted_root_file
    destination = "${local.artifacts}/root.json"
  }

  provisioner "file" {
    source      = var.service_file
    destination = "${local.artifacts}/deltacache.service"
  }

  provisioner "file" {
    source      = "${var.monitoring_dir}/"
    destination = "${local.artifacts}/monitoring"
  }

  provisioner "file" {
    source      = var.provision_script
    destination = "${local.artifacts}/scripts/provision.sh"
  }

  # Install (no compiler, no package build), check what was installed, and leave no
  # artefacts behind. The unit is enabled, not started: the state dir stays empty in the
  # image and each instance clones the bundle and syncs at its first boot.
  provisioner "shell" {
    inline = [
      "sudo -n bash ${local.artifacts}/scripts/provision.sh --root / --artifacts ${local.artifacts}",
      "/usr/local/bin/deltacache --version",
      "test -s /usr/share/man/man1/deltacache-serve.1.gz -a -s /usr/share/bash-completion/completions/deltacache",
      "systemctl is-enabled deltacache.service",
      "test -s /usr/share/doc/deltacache/monitoring/alerts.yml",
      "sudo -n rm -rf ${local.artifacts}",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_output
    strip_path = true
    custom_data = {
      dataset           = var.dataset
      bundle_seq        = var.bundle_seq
      model_fingerprint = var.model_fingerprint
      git_revision      = var.git_revision
    }
  }
}
