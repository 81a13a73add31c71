# Packer 1.7+ only: pins the Amazon plugin that `packer init packer/` installs. Kept apart
# from deltacache.pkr.hcl because Debian's packer 1.6.6 (which has the amazon-ebs builder
# built in) refuses a `packer { required_plugins { ... } }` block; with 1.6 validate and
# build deltacache.pkr.hcl alone, with 1.7+ the whole directory.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0, < 2.0.0"
    }
  }
}
